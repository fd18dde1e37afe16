"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021), pure PyTorch.

Each query attends to ``num_points`` bilinear samples per head and per feature level, at
learned offsets around its reference point, with softmax weights over all levels and points.
The samples come from :func:`torch.nn.functional.grid_sample` (one call per level), so no
compiled op is needed and the layer exports with ``torch.export`` and ONNX; an inference copy
(``segzoo.optimize``) gathers the bilinear corners instead (:func:`ms_deform_attn_gather`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn(value: torch.Tensor, shapes: Sequence[tuple[int, int]], locations: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """The deformable-attention sum.

    Args:
        value: ``B x S x heads x d`` values of every level, flattened and concatenated
            (``S = sum(h * w)``, level order as ``shapes``).
        shapes: ``(h, w)`` of each level, Python ints.
        locations: ``B x Q x heads x L x P x 2`` sample points, ``(x, y)`` in ``[0, 1]`` of each
            level (pixel-area convention, as ``align_corners=False``).
        weights: ``B x Q x heads x L x P`` attention weights.

    Returns ``B x Q x (heads * d)``.
    """
    b, _, heads, d = value.shape
    q, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    grids = 2 * locations - 1  # grid_sample's [-1, 1]
    samples = []
    for lvl, v in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        h, w = shapes[lvl]
        v = v.permute(0, 2, 3, 1).reshape(b * heads, d, h, w)  # (B*heads, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * heads, q, points, 2)  # (B*heads, Q, P, 2)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # (B*heads, d, Q, L*P)
    w = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (stacked * w).sum(-1).view(b, heads * d, q)
    return out.transpose(1, 2)


def ms_deform_attn_gather(value: torch.Tensor, shapes: Sequence[tuple[int, int]], locations: torch.Tensor,
                          weights: torch.Tensor) -> torch.Tensor:
    """:func:`ms_deform_attn` by gathering the four bilinear corners of every sample instead of
    ``grid_sample``: each sample's attention weight is folded into its corner weights (zero for a corner
    outside the map, which is ``grid_sample``'s zero padding) and one weighted ``embedding_bag`` sum
    per query and head reads the value rows, so no ``B x heads x d x Q x L x P`` sample tensor is
    made. The same arithmetic (bilinear weights, then the attention sum) in another order: equal
    to :func:`ms_deform_attn` to float rounding, several times faster on the CPU.
    """
    b, s, heads, d = value.shape
    q, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    if b * q == 0:  # no image or no query: the grid_sample path gives the empty output (and its autograd graph)
        return ms_deform_attn(value, shapes, locations, weights)
    # corner rows (exact in float64, or float32 below 2^24) and weights, one bag per (image, query, head)
    if locations.dtype not in (torch.float32, torch.float64):  # half precision cannot hold the pixel coordinates
        locations = locations.float()
    index = torch.empty(b, q, heads, levels, 4, points, dtype=torch.float64 if s >= 2 ** 24 else locations.dtype,
                        device=value.device)
    wts = torch.empty(b, q, heads, levels, 4, points, dtype=locations.dtype, device=value.device)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        x = locations[:, :, :, lvl, :, 0] * w - 0.5  # (B, Q, heads, P): pixel coordinates, align_corners=False
        y = locations[:, :, :, lvl, :, 1] * h - 0.5
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        a = weights[:, :, :, lvl]
        # each corner's weight is 0 outside the map (grid_sample's zero padding)
        wy = (torch.where((y0 >= 0) & (y0 < h), (1 - fy) * a, 0), torch.where((y0 >= -1) & (y0 < h - 1), fy * a, 0))
        wx = (torch.where((x0 >= 0) & (x0 < w), 1 - fx, 0), torch.where((x0 >= -1) & (x0 < w - 1), fx, 0))
        base = (y0 * w + x0).to(index.dtype)  # the top-left corner in the level
        for c, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            torch.mul(wy[dy], wx[dx], out=wts[:, :, :, lvl, c])
            torch.clamp(base + (start + dy * w + dx), 0, s - 1, out=index[:, :, :, lvl, c])  # 0-weight rows: any
        start += h * w
    rows = index.long() if index.dtype == torch.float64 else index.int()
    rows = rows.view(b, q, heads, -1).mul_(heads)
    rows += torch.arange(heads, dtype=rows.dtype, device=value.device).view(1, 1, heads, 1)
    rows += (torch.arange(b, dtype=rows.dtype, device=value.device) * (s * heads)).view(b, 1, 1, 1)
    out = F.embedding_bag(rows.view(b * q * heads, -1), value.reshape(b * s * heads, d), mode="sum",
                          per_sample_weights=wts.view(b * q * heads, -1).to(value.dtype))
    return out.view(b, q, heads * d)


class MSDeformAttn(nn.Module):
    """Deformable attention of queries over ``levels`` feature maps.

    ``forward(query, reference, value, shapes)``: ``query`` ``B x Q x dim`` (position embedding
    already added), ``reference`` ``B x Q x L x 2`` reference points in ``[0, 1]`` per level,
    ``value`` ``B x S x dim`` (the flattened maps, no position embedding), ``shapes`` their
    ``(h, w)``. Offsets are in pixels of each level.
    """

    def __init__(self, dim: int = 256, heads: int = 8, levels: int = 4, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.gather = False  # fold_for_inference: ms_deform_attn_gather in eval
        self.reset_parameters()

    def fold_for_inference(self) -> bool:
        """Sample by gathering corners (:func:`ms_deform_attn_gather`) in eval mode: the same sums to
        float rounding, several times faster on the CPU. ``torch.export`` and ONNX export keep
        ``grid_sample``."""
        self.gather = True
        return True

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: zero offset weights, the biases spreading each head's
        points along its own direction at distances 1..P, uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values  # (heads, 2) on the unit square
        grid = grid[:, None, None, :].repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        b, q, _ = query.shape
        s = value.shape[1]
        v = self.value_proj(value).view(b, s, self.heads, self.dim // self.heads)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)  # (L, 2) as (x, y)
        locations = reference[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
        gather = self.gather and not self.training and not (torch.compiler.is_exporting()
                                                            or torch.onnx.is_in_onnx_export())
        return self.output_proj((ms_deform_attn_gather if gather else ms_deform_attn)(v, shapes, locations, weights))
