"""Benchmark cases for CenterNet: the whole detector against its backbone alone.

No other library ships a pip-installable CenterNet, so the anchor is the same backbone's
raw features from timm (``features_only``) on the same 512 x 512 input: the ratio shows
what the neck, the heads and the decoding (peaks, top-100, boxes) cost on top of it. It is
a lower bound, not a peer: the anchor name says "bare backbone".
"""

from __future__ import annotations

import segzoo
from benchmarks.speed import Case, register_case
from benchmarks.speed.cases_semantic import image, normalized


def _timm_features(name: str):
    def build():
        import timm

        return timm.create_model(name, features_only=True, pretrained=False)

    return build


def _case(name: str, backbone: str, size: int | None) -> list[Case]:
    s = size or 512
    return [Case(
        name=name, size=f"1x3x{s}x{s}",
        build=lambda: segzoo.build(name, num_classes=80),
        anchor=_timm_features(backbone), anchor_name=f"timm {backbone} features (bare backbone)",
        make_input=image(s), anchor_input=normalized,
    )]


def _register(name: str, backbone: str) -> None:
    @register_case(name)
    def cases(size: int | None = None) -> list[Case]:
        return _case(name, backbone, size)


for _name, _backbone in (("centernet_resnet18", "resnet18"), ("centernet_resnet50", "resnet50"),
                         ("centernet_resnet101", "resnet101"), ("centernet_resdcn18", "resnet18"),
                         ("centernet_resdcn101", "resnet101"), ("centernet_dla34", "dla34"),
                         ("centernet_dla34_nodcn", "dla34")):
    _register(_name, _backbone)
