"""Mix Transformer (MiT), the hierarchical encoder of SegFormer (Xie et al., "SegFormer: Simple
and Efficient Design for Semantic Segmentation with Transformers", NeurIPS 2021), written from
the paper.

Four stages; stage ``i`` embeds its input with an overlapping patch embedding (a ``K x K``
convolution of stride ``S`` and padding ``K // 2``: ``K, S = 7, 4`` for the first stage and
``3, 2`` after it, so the maps have strides 4, 8, 16 and 32), runs ``depths[i]`` transformer
blocks on the ``h * w`` tokens and normalises them (LayerNorm). A block is

    x = x + Attention(LN(x))        efficient self-attention: keys and values come from the map
                                    reduced by a ``R x R`` convolution of stride ``R`` (+ LN),
                                    so attention costs O(N^2 / R^2) instead of O(N^2)
    x = x + MixFFN(LN(x))           Linear -> 3x3 depth-wise conv on the h x w map -> GELU -> Linear

with no positional encoding: the depth-wise convolution and the zero padding of the patch
embeddings give the position information (the paper's Section 3.1). The variants B0-B5 differ
only in widths and depths (:data:`ARCHS`, the paper's Table 6).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from segzoo.backbones.base import Backbone
from segzoo.hub.cache import looks_like_path


@dataclasses.dataclass(frozen=True)
class MiTArch:
    """One MiT variant: per-stage widths, depths, heads and reduction ratios."""

    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


_WIDE = (64, 128, 320, 512)
#: the paper's Table 6
ARCHS: dict[str, MiTArch] = {
    "mit_b0": MiTArch((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTArch(_WIDE, (2, 2, 2, 2)),
    "mit_b2": MiTArch(_WIDE, (3, 4, 6, 3)),
    "mit_b3": MiTArch(_WIDE, (3, 4, 18, 3)),
    "mit_b4": MiTArch(_WIDE, (3, 8, 27, 3)),
    "mit_b5": MiTArch(_WIDE, (3, 6, 40, 3)),
}


def _to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)  # (N, hw, C) -> (N, C, h, w)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: ``k x k`` conv of stride ``s`` (padding ``k // 2``) -> LN.

    Input ``N x in_channels x H x W``; output ``(N x hw x dim tokens, h, w)``.
    """

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride, kernel_size // 2)
        self.norm = nn.LayerNorm(dim)  # eps 1e-5, whatever norm_eps is (as the official weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w  # (N, hw, dim)


class EfficientAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from the map reduced ``sr_ratio`` times
    per side (``sr_ratio x sr_ratio`` conv of the same stride, then LN; none for ratio 1)."""

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"MiT width {dim} is not divisible by its {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)  # eps 1e-5, as the patch embeddings

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, length, dim = x.shape
        kv = x
        if self.sr_ratio > 1:
            kv = self.sr_norm(self.sr(_to_map(x, h, w)).flatten(2).transpose(1, 2))  # (N, hw / R^2, C)
        q = self.q(x).view(n, length, self.heads, -1).transpose(1, 2)  # (N, heads, hw, d)
        k = self.k(kv).view(n, kv.shape[1], self.heads, -1).transpose(1, 2)  # (N, heads, hw / R^2, d)
        v = self.v(kv).view(n, kv.shape[1], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v: (N, heads, hw, d)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class MixFFN(nn.Module):
    """``Linear(dim, hidden) -> 3x3 depth-wise conv on the h x w map -> GELU -> Linear(hidden, dim)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.dwconv(_to_map(self.fc1(x), h, w)).flatten(2).transpose(1, 2)  # (N, hw, hidden)
        return self.fc2(F.gelu(x))


class MiTBlock(nn.Module):
    """``x + DropPath(Attention(LN(x)))`` then ``x + DropPath(MixFFN(LN(x)))``."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ffn = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class MiTStage(nn.Module):
    """Patch embedding -> blocks -> LN; returns the ``N x dim x h x w`` map."""

    def __init__(self, in_channels: int, dim: int, *, depth: int, heads: int, sr_ratio: int, mlp_ratio: int,
                 kernel_size: int, stride: int, drop_paths: Sequence[float], eps: float) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_channels, dim, kernel_size, stride)
        self.blocks = nn.ModuleList(MiTBlock(dim, heads, sr_ratio, mlp_ratio, p, eps) for p in drop_paths)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, h, w, use_reentrant=False)
            else:
                x = block(x, h, w)
        return _to_map(self.norm(x), h, w)


class MiT(Backbone):
    """The Mix Transformer encoder behind the :class:`Backbone` contract.

    Input ``N x 3 x H x W`` normalised images, any size; output four maps with
    ``channels = arch.dims`` at strides 4, 8, 16, 32 (``ceil`` of the input size over the stride).

    Args:
        name: a key of :data:`ARCHS` (``"mit_b0"`` ... ``"mit_b5"``).
        drop_path_rate: stochastic depth, rising linearly over all blocks to this value (0.1 in the paper).
        norm_eps: epsilon of the blocks' and the stage-end LayerNorms: 1e-6 in the paper's code
            (and smp's copy of it); Hugging Face's port uses PyTorch's default 1e-5 (a difference
            of ~1e-6 in the logits). The patch-embedding and reduction norms use 1e-5 in all three.
        weights: a local file holding this class's state dict (``segzoo.save`` of a model, or
            :func:`segzoo.convert.from_huggingface`'s output) for the backbone.
    """

    kind = "MiT body"
    strides = (4, 8, 16, 32)  # the patch embeddings reduce by 4, then by 2 in each stage
    weights_hint = "the file must hold segzoo's MiT state dict (convert Hugging Face files with `segzoo convert`)"

    def __init__(self, name: str = "mit_b0", drop_path_rate: float = 0.1, norm_eps: float = 1e-6,
                 weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        if name not in ARCHS:
            raise ValueError(f"unknown MiT variant {name!r}; choose one of {', '.join(ARCHS)}")
        arch = ARCHS[name]
        self.name = name
        self.arch = arch
        total = sum(arch.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear in depth
        stages, start, in_ch = [], 0, 3
        for i, (dim, depth) in enumerate(zip(arch.dims, arch.depths)):
            stages.append(MiTStage(in_ch, dim, depth=depth, heads=arch.heads[i], sr_ratio=arch.sr_ratios[i],
                                   mlp_ratio=arch.mlp_ratio, kernel_size=7 if i == 0 else 3, stride=4 if i == 0 else 2,
                                   drop_paths=rates[start:start + depth], eps=norm_eps))
            start += depth
            in_ch = dim
        self.stages = nn.ModuleList(stages)
        if weights is not None:
            self.load_weights(weights)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.arch.dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def stage_prefixes(self) -> list[tuple[str, ...]]:
        return [(f"stages.{i}.",) for i in range(len(self.stages))]

    def set_grad_checkpointing(self, enable: bool = True) -> MiT:
        for stage in self.stages:
            stage.grad_checkpointing = bool(enable)
        self.grad_checkpointing = bool(enable)
        return self

    def load_weights(self, source: str | os.PathLike) -> MiT:
        if not looks_like_path(source):
            raise ValueError(
                f"MiT bodies take a local weights file as backbone_weights, not the tag {source!r}: timm has no "
                "MiT weights. Use weights= with a segformer_* weights row (segzoo.list_weights('segformer*')), "
                "or convert a Hugging Face file with `segzoo convert --from huggingface`"
            )
        return super().load_weights(source)


def mit_backbone(name: str, weights: str | os.PathLike | None = None) -> MiT:
    """The MiT body ``name`` (a key of :data:`ARCHS`), for :data:`segzoo.backbones.BODIES`."""
    return MiT(name, weights=weights)


__all__ = ["ARCHS", "MiT", "MiTArch", "mit_backbone"]
