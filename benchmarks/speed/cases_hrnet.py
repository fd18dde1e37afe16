"""Benchmark cases for HRNet: segzoo's HRNetV2 against timm's HRNet body with the same head.

The anchor is timm's ``hrnet_*`` body (``features_only``, the four branches, nearest
fusion as in its ImageNet code) followed by the HRNetV2 head built here: the difference in
time is segzoo's bilinear fusion and its own module code. Inputs are ``size x size``
(512 x 512 by default, the standard semantic input of the table). HRNetV2-OCR's official code
needs its own config system, so its anchor is the same timm body followed by the OCR head restated
here from the paper and the official module layout (``conv3x3_ocr``, ``aux_head``, the spatial
gather, the object attention block and ``conv_bn_dropout``, ``cls_head``) in plain PyTorch.
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


def _cbr(cin: int, cout: int, k: int = 1, bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class TimmHRNetOCR(nn.Module):
    """timm HRNet body + the OCR head as the official HRNet-OCR lays it out, logits at input size.

    Soft object regions from ``aux_head`` pool one representation per class from the 3x3 pixel
    features; every pixel attends to them (query/key: two 1x1 conv-BN-ReLU, value and the way
    back: one) and the context, concatenated with the pixels, goes through a 1x1 conv-BN-ReLU
    before the classifier. Bilinear upsampling with ``align_corners=True`` as in the OCR configs.
    """

    def __init__(self, name: str, num_classes: int, mid: int = 512, key: int = 256) -> None:
        super().__init__()
        self.body = timm.create_model(
            name, pretrained=False, features_only=True, feature_location="", out_indices=(1, 2, 3, 4)
        )
        c = sum(self.body.feature_info.channels())
        self.key = key
        self.conv3x3_ocr = nn.Sequential(*_cbr(c, mid, 3, bias=True))
        self.aux_head = nn.Sequential(*_cbr(c, c, 1, bias=True), nn.Conv2d(c, num_classes, 1))
        self.f_pixel = nn.Sequential(*_cbr(mid, key), *_cbr(key, key))
        self.f_object = nn.Sequential(*_cbr(mid, key), *_cbr(key, key))
        self.f_down = nn.Sequential(*_cbr(mid, key))
        self.f_up = nn.Sequential(*_cbr(key, mid))
        self.conv_bn_dropout = nn.Sequential(*_cbr(2 * mid, mid), nn.Dropout2d(0.05))
        self.cls_head = nn.Conv2d(mid, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.body(x)
        size = xs[0].shape[-2:]
        feats = torch.cat([xs[0], *(F.interpolate(t, size=size, mode="bilinear", align_corners=True)
                                    for t in xs[1:])], 1)
        regions = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        b, c, h, w = feats.shape
        # spatial gather: class-wise softmax over the pixels, weighted sum of the pixel features
        probs = F.softmax(regions.view(b, regions.shape[1], -1), dim=2)
        proxy = torch.matmul(probs, feats.view(b, c, -1).permute(0, 2, 1)).permute(0, 2, 1).unsqueeze(3)
        # object attention block
        query = self.f_pixel(feats).view(b, self.key, -1).permute(0, 2, 1)
        keys = self.f_object(proxy).view(b, self.key, -1)
        value = self.f_down(proxy).view(b, self.key, -1).permute(0, 2, 1)
        sim = F.softmax(torch.matmul(query, keys) * self.key**-0.5, dim=-1)
        context = torch.matmul(sim, value).permute(0, 2, 1).contiguous().view(b, self.key, h, w)
        out = self.cls_head(self.conv_bn_dropout(torch.cat([self.f_up(context), feats], 1)))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=True)


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
        anchor=lambda: TimmHRNetOCR("hrnet_w48", 19), anchor_name="timm hrnet_w48 body + OCR head (official layout)",
        make_input=_image(s, s), anchor_input=normalized,
    )]
