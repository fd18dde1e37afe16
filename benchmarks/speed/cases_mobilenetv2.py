"""Benchmark cases for the families on the MobileNetV2 body (timm ``mobilenetv2_100``).

U-Net and DeepLabV3+ run against smp's model on the same timm body (``tu-mobilenetv2_100``); the
others have no pip-installable peer on this body, so the anchor is the body's raw features from timm
on the same input (a lower bound, as for CenterNet: the anchor name says "bare backbone").
"""

from __future__ import annotations

import segzoo
from benchmarks.speed import Case, register_case
from benchmarks.speed.cases_centernet import _timm_features
from benchmarks.speed.cases_semantic import _smp_case, image, normalized

BODY = "mobilenetv2_100"


def _bare(name: str, size: int | None, default: int, **build) -> list[Case]:
    s = size or default
    return [Case(name=name, size=f"1x3x{s}x{s}", build=lambda: segzoo.build(name, **build),
                 anchor=_timm_features(BODY), anchor_name=f"timm {BODY} features (bare backbone)",
                 make_input=image(s), anchor_input=normalized)]


@register_case("unet_mobilenetv2")
def unet_mobilenetv2(size: int | None = None) -> list[Case]:
    return [_smp_case("unet_mobilenetv2", "Unet", size, encoder_name=f"tu-{BODY}")]


@register_case("deeplabv3plus_mobilenetv2")
def deeplabv3plus_mobilenetv2(size: int | None = None) -> list[Case]:
    return [_smp_case("deeplabv3plus_mobilenetv2", "DeepLabV3Plus", size, encoder_name=f"tu-{BODY}",
                      encoder_output_stride=16)]


def _register(name: str, default: int, **build) -> None:
    @register_case(name)
    def cases(size: int | None = None) -> list[Case]:
        return _bare(name, size, default, **build)


for _name in ("deeplabv3_mobilenetv2", "fcn_mobilenetv2", "pspnet_mobilenetv2"):
    _register(_name, 512, num_classes=21)
_register("centernet_mobilenetv2", 512, num_classes=80)
for _name in ("fasterrcnn_mobilenetv2_fpn", "maskrcnn_mobilenetv2_fpn", "panoptic_fpn_mobilenetv2"):
    _register(_name, 800, box_score_thresh=0.0)
