"""Run a ResNet body on oneDNN's blocked tensors: an exact inference rewrite for the CPU.

A dense ``N x C x H x W`` tensor enters every oneDNN convolution in PyTorch's plain layout, is
reordered into oneDNN's blocked layout (``nChw8c``) for the kernel, and its output is reordered back,
on every convolution of the body; the max pooling after the stem runs on PyTorch's scalar NCHW kernel.
A tensor converted once with ``Tensor.to_mkldnn()`` stays blocked through the convolutions, ReLUs,
residual additions and the max pooling of a ResNet, so those reorders happen once per image instead of
twice per convolution. The kernels and their numbers are oneDNN's, as before.

:func:`blocked_body` says whether a body is built only of modules known to run on blocked tensors
(a timm ResNet ``features_only`` body, or segzoo's conv blocks, with their BatchNorm folded);
:func:`blocked_ready` whether an input
may take that path (float32 on the CPU, plain layout, no autograd, no autocast, not traced or exported).
"""

from __future__ import annotations

import torch
from timm.models._features import FeatureListNet
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from segzoo.layers.conv import ConvNormAct, SeparableConvNormAct
from segzoo.layers.tracing import is_tracing

__all__ = ["BLOCKED_MODULES", "blocked_body", "blocked_ready", "to_blocked", "to_dense"]

# modules whose forward runs on blocked tensors as it does on dense ones: convolutions (plain, or the
# prepacked ones segzoo.prepack puts in their place, which call the same oneDNN convolution), ReLU, max
# pooling, identities (folded BatchNorm), segzoo's conv blocks (sequences of those) and the containers and
# residual blocks of a timm ResNet, whose forwards add and apply those only (``x += shortcut``)
BLOCKED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Identity, nn.Sequential, ConvNormAct, SeparableConvNormAct,
    FeatureListNet, Bottleneck, BasicBlock,
)


def blocked_body(body: nn.Module) -> bool:
    """Whether every module of ``body`` is one of :data:`BLOCKED_MODULES` (exact types: subclasses such as
    weight-standardised convolutions keep their own forward) and its ResNet blocks have no squeeze-excitation,
    drop path, anti-aliasing or drop block."""
    if not torch.backends.mkldnn.is_available():
        return False
    for m in body.modules():
        if type(m) not in BLOCKED_MODULES:
            return False
        if isinstance(m, (Bottleneck, BasicBlock)) and (m.se is not None or m.drop_path is not None):
            return False
        if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            return False
        if isinstance(m, nn.MaxPool2d) and (m.return_indices or m.ceil_mode):
            return False
    return True


def blocked_ready(x: torch.Tensor) -> bool:
    """Whether ``x`` may run a :func:`blocked_body` on blocked tensors: a plain contiguous float32 CPU
    tensor, without autograd (blocked tensors have none), autocast, tracing or export, with oneDNN on."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.layout == torch.strided
        and x.is_contiguous()
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.enabled
        and not is_tracing()
    )


def to_blocked(x: torch.Tensor) -> torch.Tensor:
    """``x`` in oneDNN's layout (an ``mkldnn`` tensor)."""
    return x.to_mkldnn()


def to_dense(x: torch.Tensor) -> torch.Tensor:
    """A blocked tensor back in PyTorch's contiguous layout (a dense tensor is returned as it is)."""
    return x.to_dense() if x.is_mkldnn else x
