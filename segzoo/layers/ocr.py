"""Object-contextual representations (Yuan, Chen and Wang, "Object-Contextual
Representations for Semantic Segmentation", ECCV 2020), as used by HRNet + OCR.

Given pixel features and a coarse segmentation (the *soft object regions*), OCR pools one
representation per class (object region representations), lets every pixel attend to
them (pixel-region relation) and fuses the resulting context with the pixel features
(augmented representation) before the final classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from segzoo.layers.conv import ConvNormAct


def object_regions(feats: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Object region representations: features averaged with spatially-softmaxed regions.

    Args:
        feats: pixel features, ``N x C x H x W``.
        regions: soft object regions (class logits), ``N x K x H x W``.

    Returns:
        ``N x C x K x 1``: one C-dim representation per class, laid out as a feature map
        so that 1x1 convolutions apply to it.
    """
    weights = regions.flatten(2).softmax(dim=2)  # (N, K, HW), sums to 1 over pixels
    pixels = feats.flatten(2).transpose(1, 2)  # (N, HW, C)
    objects = torch.bmm(weights, pixels)  # (N, K, C)
    return objects.transpose(1, 2).unsqueeze(3)  # (N, C, K, 1)


class ObjectAttention(nn.Module):
    """Pixel-region relation: each pixel attends over the object representations.

    Queries come from the pixels, keys and values from the objects (two 1x1 conv-BN-ReLU
    layers for queries and keys, one for values); the attended values are projected back
    to ``in_channels``.

    Args:
        in_channels: channels of pixels and objects.
        key_channels: channels of queries, keys and values.
    """

    def __init__(self, in_channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.query = nn.Sequential(
            *ConvNormAct(in_channels, key_channels, 1), *ConvNormAct(key_channels, key_channels, 1)
        )
        self.key = nn.Sequential(
            *ConvNormAct(in_channels, key_channels, 1), *ConvNormAct(key_channels, key_channels, 1)
        )
        self.value = nn.Sequential(*ConvNormAct(in_channels, key_channels, 1))
        self.project = nn.Sequential(*ConvNormAct(key_channels, in_channels, 1))

    def forward(self, pixels: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """``pixels``: ``N x C x H x W``; ``objects``: ``N x C x K x 1`` -> ``N x C x H x W``."""
        n, _, h, w = pixels.shape
        q = self.query(pixels).flatten(2).transpose(1, 2)  # (N, HW, D)
        k = self.key(objects).flatten(2)  # (N, D, K)
        v = self.value(objects).flatten(2).transpose(1, 2)  # (N, K, D)
        attn = (torch.bmm(q, k) * self.key_channels**-0.5).softmax(dim=-1)  # (N, HW, K)
        context = torch.bmm(attn, v).transpose(1, 2).reshape(n, self.key_channels, h, w)
        return self.project(context)


class OCRHead(nn.Module):
    """The OCR head on HRNetV2 features.

    Input: features ``N x in_channels x H x W``. Output: ``(logits, region_logits)``, both
    ``N x num_classes x H x W``; ``region_logits`` are the soft object regions, trained with
    the auxiliary loss.

    Layout: ``aux`` (1x1 conv with bias -> BN -> ReLU -> 1x1 conv to classes) gives the
    regions; ``bottleneck`` (3x3 conv with bias -> BN -> ReLU) gives pixel features of
    ``mid_channels``; object representations pooled from them, :class:`ObjectAttention`
    gives each pixel's context; ``fuse`` (1x1 conv on [context, pixels] -> BN -> ReLU ->
    Dropout2d) gives the augmented representation; ``classifier`` (1x1 conv) the logits.

    Args:
        in_channels: channels of the input features (720 for HRNet-W48).
        num_classes: classes including background.
        mid_channels: pixel/object representation channels (512).
        key_channels: attention channels (256).
        dropout: Dropout2d probability after the fusion (0.05).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        mid_channels: int = 512,
        key_channels: int = 256,
        dropout: float = 0.05,
    ) -> None:
        super().__init__()
        self.aux = nn.Sequential(
            *ConvNormAct(in_channels, in_channels, 1, bias=True), nn.Conv2d(in_channels, num_classes, 1)
        )
        self.bottleneck = nn.Sequential(*ConvNormAct(in_channels, mid_channels, 3, bias=True))
        self.attention = ObjectAttention(mid_channels, key_channels)
        self.fuse = nn.Sequential(*ConvNormAct(2 * mid_channels, mid_channels, 1), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        regions = self.aux(feats)  # (N, K, H, W)
        pixels = self.bottleneck(feats)  # (N, M, H, W)
        objects = object_regions(pixels, regions)  # (N, M, K, 1)
        context = self.attention(pixels, objects)  # (N, M, H, W)
        out = self.fuse(torch.cat([context, pixels], dim=1))
        return self.classifier(out), regions
