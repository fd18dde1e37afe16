"""Shared by the Hugging Face parity tests: random weights with random norm statistics, and the
comparison of a segzoo model with a transformers model on the same batch."""

from __future__ import annotations

import torch
from torch import nn

TOL = 1e-5


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every 1-D parameter (biases, LayerNorm/BatchNorm affine, layer scales) and give
    BatchNorm layers random running statistics, so that no norm or bias is an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if name.endswith(("norm.weight", "layer_norm.weight", "layernorm.weight",
                                             "batch_norm.weight", "layernorm_before.weight",
                                             "layernorm_after.weight", "layer_norm_1.weight",
                                             "layer_norm_2.weight")) or ".hidden_states_norms." in name else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def batch(n: int = 2, size: tuple[int, int] = (64, 64), classes: int = 5, seed: int = 0):
    """``[0, 1]`` images, their ImageNet-normalised copy (the reference's input) and labels with ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, *size, generator=g)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    labels = torch.randint(0, classes, (n, *size), generator=g)
    labels[:, :3] = 255
    return images, (images - mean) / std, labels


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
