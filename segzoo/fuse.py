"""Fold BatchNorm into the preceding convolution for inference.

Which convolution feeds which norm layer is found by running the model once with hooks,
not by reading module names, so it works for timm backbones, segzoo heads and anything
else built from ``nn.Conv2d`` (or ``nn.ConvTranspose2d``, or segzoo's DCNv2 layer) followed by a BatchNorm.
A pair is folded only when the norm layer's every input came straight from that convolution and the convolution's every
output went only to that norm layer.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from segzoo.layers.dcn import ModulatedDeformConv2d

try:  # timm's BatchNorm + activation in one module
    from timm.layers import BatchNormAct2d
except ImportError:  # pragma: no cover
    BatchNormAct2d = ()

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)
# exact types: subclasses may compute something else. The DCNv2 layer is ``weight . samples + bias`` per output
# channel, like a convolution (its offset branch reads the input, not the output): BatchNorm folds into it alike
_CONVS = (nn.Conv2d, nn.ConvTranspose2d, ModulatedDeformConv2d)


def _norm_params(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) such that ``bn(x) == x * scale + shift`` per channel, in eval mode."""
    mean, var = bn.running_mean, bn.running_var
    weight = bn.weight if bn.weight is not None else torch.ones_like(mean)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


@torch.no_grad()
def _fold(conv: nn.Conv2d | nn.ConvTranspose2d | ModulatedDeformConv2d, bn: nn.Module) -> None:
    scale, shift = _norm_params(bn)
    w = conv.weight
    if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out / groups, kh, kw): output channels on dim 1
        g = conv.groups
        w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:]).mul_(
            scale.view(g, 1, w.shape[1], 1, 1).to(w.dtype))
    else:
        w.mul_(scale.view(-1, 1, 1, 1).to(w.dtype))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    new_bias = bias * scale + shift
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


def _replacement(bn: nn.Module) -> nn.Module:
    if BatchNormAct2d and isinstance(bn, BatchNormAct2d):
        return nn.Sequential(bn.drop, bn.act)  # keep timm's fused activation
    return nn.Identity()


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _consumer_counts(outputs: Any, inner: list | None = None) -> dict[Any, int]:
    """How many autograd nodes take each node's output as an input (the backward graph).

    The walk starts from the model's outputs and from ``inner`` nodes (every submodule's
    outputs), so that a graph cut by a ``no_grad`` postprocess (detection decoding) is still
    walked up to where the cut is."""
    counts: dict[Any, int] = defaultdict(int)
    roots = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
    seen, stack = set(), list(roots) + list(inner or [])
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                counts[nxt] += 1
                stack.append(nxt)
    for r in roots:  # a node whose output is returned by the model is consumed by the caller
        counts[r] += 1
    return counts


def find_conv_bn_pairs(model: nn.Module, example: Any) -> list[tuple[str, str]]:
    """Names of ``(conv, norm)`` pairs where the norm only ever normalises that conv's output
    and the conv's output feeds nothing but that norm (checked on the autograd graph)."""
    names = {m: n for n, m in model.named_modules()}
    norms = _NORMS + ((BatchNormAct2d,) if BatchNormAct2d else ())
    if not any(isinstance(m, norms) for m in names):  # nothing to fold: no trace (the model may not be traceable)
        return []
    conv_nodes: dict[nn.Module, list] = defaultdict(list)
    node_conv: dict[Any, nn.Module] = {}
    feeds: dict[nn.Module, list] = defaultdict(list)  # norm -> producer conv of each input
    handles = []

    def conv_hook(mod, inp, out):
        conv_nodes[mod].append(out.grad_fn)
        node_conv[out.grad_fn] = mod

    def norm_hook(mod, inp):
        feeds[mod].append(node_conv.get(inp[0].grad_fn))

    inner: list = []  # grad_fn of every submodule output: where the walk also starts

    def any_hook(mod, inp, out):
        inner.extend(t.grad_fn for t in _tensors(out) if t.grad_fn is not None)

    for m in model.modules():
        if type(m) in _CONVS:
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, norms):
            handles.append(m.register_forward_pre_hook(norm_hook))
        handles.append(m.register_forward_hook(any_hook))
    if isinstance(example, torch.Tensor):
        example = example.detach().clone().requires_grad_(True)
    elif isinstance(example, (list, tuple)):
        example = [e.detach().clone().requires_grad_(True) for e in example]
    try:
        with torch.enable_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    counts = _consumer_counts(out, inner)
    pairs = []
    for norm, producers in feeds.items():
        convs = set(producers)
        if len(convs) != 1 or None in convs:
            continue
        conv = producers[0]
        nodes = conv_nodes[conv]
        if len(nodes) == len(producers) and all(n is not None and counts[n] == 1 for n in nodes):
            pairs.append((names[conv], names[norm]))
    return pairs


def fuse(model: nn.Module, example: Any = None, inplace: bool = False) -> nn.Module:
    """Return an inference copy of ``model`` with BatchNorm folded into convolutions.

    The result computes the same outputs (within float rounding, about 1e-5) in eval
    mode with fewer operations; it is meant for inference and export, not training.

    Args:
        model: any segzoo model (or module whose forward takes ``example``).
        example: an input to trace which convolution feeds which norm layer; a
            ``1 x 3 x 64 x 64`` image batch by default.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The fused model in eval mode, with ``fused_pairs`` listing what was folded.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if example is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else "cpu"
        example = torch.rand(1, 3, 64, 64, device=device)
    pairs = find_conv_bn_pairs(model, example)
    for conv_name, norm_name in pairs:
        conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
        _fold(conv, norm)
        _set_module(model, norm_name, _replacement(norm))
    model.fused_pairs = pairs
    return model
