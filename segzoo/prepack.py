"""Convolutions with their weights reordered once for oneDNN, for CPU inference.

PyTorch's eager ``nn.Conv2d`` on the CPU hands its weight to oneDNN on every call, and oneDNN
reorders it into its blocked layout each time. :func:`prepack` replaces every eligible
convolution of an inference copy by a :class:`PrepackedConv2d` that keeps the weight in oneDNN's
layout (``torch._C._nn.mkldnn_reorder_conv2d_weight``) and calls ``torch.mkldnn_convolution``:
the same oneDNN kernel on the same numbers, without the per-call reorder. Inputs and outputs stay
ordinary dense tensors, so the rest of the model (interpolation, RoIAlign, attention) is untouched.

This is the part of ``torch.compile``'s weight "freezing" that needs no compiler. It is inference
only (no gradients), float32 only, and CPU only; :func:`eligible` says which convolutions qualify.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.layers.packed_linear import PackedLinears, can_pack

__all__ = ["PrepackedConv2d", "PrepackedLinear", "available", "eligible", "eligible_linear", "prepack"]


def available() -> bool:
    """Whether this PyTorch build has oneDNN (``torch.backends.mkldnn``) for the CPU."""
    return bool(torch.backends.mkldnn.is_available())


def eligible(conv: nn.Module) -> bool:
    """A plain float32 CPU ``nn.Conv2d`` with zero padding given as numbers (not ``"same"``).

    Subclasses (weight-standardised or deformable convolutions) keep their own forward.
    """
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.weight.dtype == torch.float32
        and conv.weight.device.type == "cpu"
    )


def _check_input(x: torch.Tensor, layer: str) -> None:
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise RuntimeError(f"a prepacked {layer} takes float32 CPU inputs, got {x.dtype} on {x.device}; "
                           "call segzoo.optimize(model, prepack=False) for other dtypes and devices")


class PrepackedConv2d(nn.Module):
    """An inference-only ``nn.Conv2d`` whose weight is held in oneDNN's blocked layout.

    ``weight`` and ``bias`` stay the convolution's parameters (code that reads ``conv.weight``, such
    as a class-indexed mask predictor, and ``state_dict`` see what they saw); the packed copy is a
    plain attribute that ``.to`` does not move, so the forward refuses other devices and dtypes.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.weight = conv.weight
        self.bias = conv.bias
        self._pack()

    def _pack(self) -> None:
        self.packed = None
        if available() and self.weight.dtype == torch.float32 and self.weight.device.type == "cpu":
            with torch.no_grad():
                weight = self.weight.detach().contiguous().to_mkldnn()
                self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight, self.padding, self.stride, self.dilation, self.groups
                )

    # deep copies and pickles carry the dense weight and pack it again (oneDNN tensors have no storage to copy)
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("packed", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._pack()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "convolution")
        if self.packed is None:
            raise RuntimeError("this prepacked convolution's weight is not a float32 CPU tensor (or this PyTorch "
                               "has no oneDNN); call segzoo.optimize on the original model on the device and dtype "
                               "you run")
        bias = None if self.bias is None else self.bias.detach()
        return torch.mkldnn_convolution(x, self.packed, bias, self.padding, self.stride, self.dilation,
                                        self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")


def eligible_linear(linear: nn.Module) -> bool:
    """A plain float32 CPU ``nn.Linear`` (subclasses, such as quantized or LoRA layers, keep their own forward)."""
    return can_pack([linear])


class PrepackedLinear(nn.Module):
    """An inference-only ``nn.Linear`` whose weight is held in oneDNN's layout
    (:class:`segzoo.layers.packed_linear.PackedLinears`): on a CPU where the default matrix product is slow
    (this project's AMD machine: 1.5-2.5x), the same product through oneDNN. ``weight`` and ``bias`` stay the
    layer's parameters; with gradients on, under autocast or tracing, or once the weights have changed, it
    computes ``F.linear`` with them."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed: PackedLinears | None = PackedLinears([linear], relu=False, rows=None)
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "linear layer")
        if self.packed is not None and self.packed.usable(x):  # None: a copy that could not pack again
            return self.packed(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def prepack(model: nn.Module, convs: bool = True, linears: bool = False) -> int:
    """Replace every :func:`eligible` convolution (``convs``) and :func:`eligible_linear` linear layer
    (``linears``) of ``model`` in place; returns how many."""
    if not available():
        return 0
    count = 0
    for parent in list(model.modules()):
        if isinstance(parent, nn.MultiheadAttention):  # reads its out_proj's weight itself
            continue
        for name, child in list(parent.named_children()):
            if convs and eligible(child):
                setattr(parent, name, PrepackedConv2d(child))
                count += 1
            elif linears and eligible_linear(child):
                setattr(parent, name, PrepackedLinear(child))
                count += 1
    return count
