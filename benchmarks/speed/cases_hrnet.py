"""Benchmark cases for HRNet: segzoo's HRNetV2 against timm's HRNet body with the same head.

The anchor is timm's ``hrnet_*`` body (``features_only``, the four branches, nearest
fusion as in its ImageNet code) followed by the HRNetV2 head built here: the difference in
time is segzoo's bilinear fusion and its own module code. Inputs are ``size x size``
(512 x 512 by default, the standard semantic input of the table). HRNetV2-OCR has no
runnable reference (the official code needs its own config system), so its row has no anchor.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

import segzoo
from benchmarks.speed import Case, register_case
from benchmarks.speed.cases_semantic import normalized


class TimmHRNetV2(nn.Module):
    """timm HRNet body + HRNetV2 head (upsample, concatenate, 1x1-BN-ReLU-1x1), logits at input size."""

    def __init__(self, name: str, num_classes: int) -> None:
        super().__init__()
        self.body = timm.create_model(
            name, pretrained=False, features_only=True, feature_location="", out_indices=(1, 2, 3, 4)
        )
        c = sum(self.body.feature_info.channels())
        self.head = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.body(x)
        size = xs[0].shape[-2:]
        feats = torch.cat([xs[0], *(F.interpolate(t, size=size, mode="bilinear") for t in xs[1:])], 1)
        return F.interpolate(self.head(feats), size=x.shape[-2:], mode="bilinear")


def _image(h: int, w: int):
    def make(device: torch.device) -> torch.Tensor:
        return torch.rand(1, 3, h, w, device=device)

    return make


def _hrnet_case(name: str, size: int | None) -> Case:
    s = size or 512
    return Case(
        name=name, size=f"1x3x{s}x{s}",
        build=lambda: segzoo.build(name, num_classes=19),
        anchor=lambda: TimmHRNetV2(name, 19), anchor_name=f"timm {name} body + HRNetV2 head",
        make_input=_image(s, s), anchor_input=normalized,
    )


def _register(name: str) -> None:
    @register_case(name)
    def cases(size: int | None = None) -> list[Case]:
        return [_hrnet_case(name, size)]


for _name in ("hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w18", "hrnet_w32", "hrnet_w48"):
    _register(_name)


@register_case("hrnet_w48_ocr")
def hrnet_w48_ocr(size: int | None = None) -> list[Case]:
    s = size or 512
    return [Case(
        name="hrnet_w48_ocr", size=f"1x3x{s}x{s}",
        build=lambda: segzoo.build("hrnet_w48_ocr", num_classes=19),
        make_input=_image(s, s),
    )]
