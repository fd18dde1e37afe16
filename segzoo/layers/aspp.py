"""Atrous Spatial Pyramid Pooling (Chen et al., "Rethinking Atrous Convolution for Semantic
Image Segmentation", 2017), in torchvision's module layout so converted weights map by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.layers.conv import ConvNormAct, SeparableConvNormAct
from segzoo.layers.tracing import is_tracing


def check_pooled_batch(x: torch.Tensor, norm: nn.Module, what: str) -> None:
    """Raise a clear error where BatchNorm on a pooled 1x1 map would see a single value.

    In training mode BatchNorm needs more than one value per channel; an image-level
    pooling branch gives one per image, so a batch of one image cannot be normalised.
    ``norm`` is the branch's normalisation layer (frozen or eval-mode layers are fine).
    """
    training_bn = isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training
    if training_bn and x.shape[0] == 1 and not is_tracing():
        raise ValueError(
            f"{what} has a BatchNorm on a 1x1 pooled map, which needs at least 2 images per "
            "batch in training mode; use a batch size >= 2, or call model.eval() (or freeze "
            "BatchNorm) to run one image"
        )


# a dilated convolution runs as its nine taps (1x1 convolutions on the parts of the map each tap reaches) where
# the taps that reach the map do less than this fraction of the full convolution's work; measured (2048 -> 256
# channels, one thread): 32 x 32 map, rates 12 / 24 / 36 (work 0.56 / 0.25 / 0.11): 0.75x / 0.36x / 0.13x the
# time; 64 x 64 map, rates 12 / 24 / 36 (0.77 / 0.56 / 0.39): 1.11x / 0.79x / 0.49x
TAPS_BELOW = 0.7


def _reach(size: int, offset: int) -> tuple[int, int]:
    """Output positions ``[start, stop)`` whose tap at ``offset`` reads inside a map of ``size``."""
    return max(0, -offset), size - max(0, offset)


class AtrousTaps(nn.Module):
    """Inference form of a dilated ``k x k`` convolution: the convolution itself, and its taps as 1x1
    convolutions for the maps on which most taps read only zero padding.

    On an ``H x W`` map a tap at offset ``(dy, dx)`` reads inside the map for the output positions
    ``max(0, -dy) <= y < H - max(0, dy)`` (and the same for ``x``) only, so the convolution equals the
    sum of each tap's 1x1 convolution over that part of the map, and a tap that reaches no position is
    skipped. With atrous rates near the map size (DeepLabV3's 12 / 24 / 36 at output stride 8 on a 32 x 32
    map, the rate-18 branch at stride 16 on a 16 x 16 map) most of the convolution's work multiplies
    padding; the taps do only the rest. The same numbers up to float rounding (the sum runs in another
    order). Traced, exported or compiled forwards, autocast, and maps where the taps would do at least
    :data:`TAPS_BELOW` of the full work, run the convolution.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        k, d = conv.kernel_size, conv.dilation
        if conv.stride != (1, 1) or conv.padding != (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2):
            raise ValueError("AtrousTaps takes a stride-1 convolution padded to keep the map size, got "
                             f"stride {conv.stride}, padding {conv.padding}")
        self.conv = conv
        centre = ((k[0] - 1) // 2, (k[1] - 1) // 2)
        order = [centre] + [(i, j) for i in range(k[0]) for j in range(k[1]) if (i, j) != centre]
        # the centre tap reaches the whole map: it comes first, starts the sum and adds the bias
        self.offsets = [((i - centre[0]) * d[0], (j - centre[1]) * d[1]) for i, j in order]
        taps = []
        for i, j in order:
            tap = nn.Conv2d(conv.in_channels, conv.out_channels, 1, groups=conv.groups, bias=(i, j) == centre
                            and conv.bias is not None)
            # views of the convolution's weight (no second copy; prepacking makes its own)
            tap.weight = nn.Parameter(conv.weight.detach()[:, :, i:i + 1, j:j + 1], requires_grad=False)
            if tap.bias is not None:
                tap.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)
            taps.append(tap)
        self.taps = nn.ModuleList(taps)

    def work(self, h: int, w: int) -> float:
        """The taps' share of the full convolution's multiply-adds on an ``h x w`` map."""
        reached = 0
        for dy, dx in self.offsets:
            y0, y1 = _reach(h, dy)
            x0, x1 = _reach(w, dx)
            reached += max(0, y1 - y0) * max(0, x1 - x0)
        return reached / (len(self.offsets) * h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (is_tracing() or x.dim() != 4 or h * w == 0 or torch.is_autocast_enabled(x.device.type)
                or self.work(h, w) >= TAPS_BELOW):  # autocast: one rounding of the sum, as the convolution
            return self.conv(x)
        out = self.taps[0](x)
        for (dy, dx), tap in zip(self.offsets[1:], self.taps[1:]):
            y0, y1 = _reach(h, dy)
            x0, x1 = _reach(w, dx)
            if y1 > y0 and x1 > x0:  # else this tap reads only padding
                out[:, :, y0:y1, x0:x1] += tap(x[:, :, y0 + dy:y1 + dy, x0 + dx:x1 + dx])
        return out


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool -> 1x1 conv -> BN -> ReLU -> upsample.

    Keys ``1`` (conv) and ``2`` (BN) as in torchvision.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *ConvNormAct(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_pooled_batch(x, self[2], "ASPP's image pooling branch")
        size = x.shape[-2:]
        y = super().forward(x)  # (N, C, 1, 1)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The branch before its upsampling: ``N x C x 1 x 1``."""
        check_pooled_batch(x, self[2], "ASPP's image pooling branch")
        return super().forward(x)


class ASPP(nn.Module):
    """Parallel 1x1 conv, 3x3 atrous convs and image pooling, concatenated and projected.

    Input: ``N x in_channels x H x W``. Output: ``N x out_channels x H x W``.

    Module layout (torchvision's): ``convs.0`` the 1x1 branch, ``convs.1..k`` one 3x3
    branch per rate, ``convs.k+1`` the pooling branch, ``project`` the 1x1 projection
    of the concatenation followed by dropout.

    Args:
        in_channels: input channels.
        rates: atrous rates of the 3x3 branches: (12, 24, 36) at output stride 8,
            (6, 12, 18) at output stride 16.
        out_channels: channels of every branch and of the output.
        dropout: dropout after the projection (0.5 in torchvision).
        separable: atrous separable convolutions (depthwise + pointwise, DeepLabV3+) in the
            3x3 branches instead of plain atrous convolutions (DeepLabV3).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        rates: Sequence[int] = (12, 24, 36),
        out_channels: int = 256,
        dropout: float = 0.5,
        separable: bool = False,
    ) -> None:
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if not rates or min(rates) < 1:
            raise ValueError(f"ASPP rates must be positive ints, got {rates}")
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, 1)]
        # 3x3 atrous branches: torchvision's ASPPConv layout (conv, BN, ReLU)
        branches += [SeparableConvNormAct(in_channels, out_channels, 3, r) if separable
                     else ConvNormAct(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *ConvNormAct(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )
        self.rates = rates
        self.out_channels = out_channels
        # inference form (fold_for_inference): the projection's columns for the k+1 spatial branches, and for
        # the pooling branch, whose input is constant over the map
        self.project_spatial: nn.Conv2d | None = None
        self.project_pooled: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.project_spatial is not None and not is_tracing():
            return self._forward_folded(x)
        y = torch.cat([branch(x) for branch in self.convs], dim=1)  # (N, (k+2)*C, H, W)
        return self.project(y)

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        # the pooling branch is one value per image and channel, upsampled to a constant map: its share of
        # the 1x1 projection is the same constant, computed on the 1 x 1 map and added as a per-image bias
        y = torch.cat([branch(x) for branch in self.convs[:-1]], dim=1)  # (N, (k+1)*C, H, W)
        y = self.project_spatial(y)
        y += self.project_pooled(self.convs[-1].pooled(x))  # (N, C, 1, 1), broadcast
        return self.project[2](y)  # ReLU; dropout is the identity in eval mode

    def fold_for_inference(self) -> bool:
        """Exact inference rewrites, after BatchNorm folding (:func:`segzoo.optimize`): the pooling branch
        as a per-image bias of the projection, and the dense atrous branches as their taps
        (:class:`AtrousTaps`) where most taps would read padding. False (nothing changed) where the
        BatchNorm after the projection or the pooling branch's convolution was not folded, or in training mode."""
        if self.training:
            return False
        conv, norm, act = self.project[0], self.project[1], self.project[2]
        pool = self.convs[-1]
        if not (isinstance(norm, nn.Identity) and isinstance(act, nn.ReLU) and isinstance(pool, ASPPPooling)
                and isinstance(pool[2], nn.Identity) and type(conv) is nn.Conv2d and conv.bias is not None):
            return False
        c = self.out_channels
        weight = conv.weight.detach()
        spatial = nn.Conv2d(weight.shape[1] - c, c, 1, bias=False)
        spatial.weight = nn.Parameter(weight[:, :-c].clone(), requires_grad=False)
        pooled = nn.Conv2d(c, c, 1)
        pooled.weight = nn.Parameter(weight[:, -c:].clone(), requires_grad=False)
        pooled.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.project_spatial, self.project_pooled = spatial, pooled
        for branch in self.convs[1:-1]:
            if isinstance(branch, ConvNormAct) and type(branch[0]) is nn.Conv2d and branch[0].dilation != (1, 1):
                branch[0] = AtrousTaps(branch[0])
        return True
