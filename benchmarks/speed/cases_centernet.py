"""Benchmark cases for CenterNet: against the official code (ResNet families) or the bare backbone.

No other library ships a pip-installable CenterNet. ``centernet_resnet18`` and ``centernet_resdcn18``
are timed against the official ``res_18`` / ``resdcn_18`` detector as its README runs it (eval, no_grad,
sigmoid + ``ctdet_decode``), restated in :mod:`benchmarks.speed.centernet_official` and holding the
segzoo model's weights in the official layout (checked equal in tests/benchmarks/test_centernet_official.py).
The other variants keep the same backbone's raw features from timm (``features_only``) on the same
input: the ratio shows what the neck, the heads and the decoding (peaks, top-100, boxes) cost on top of
it, a lower bound, not a peer (the anchor name says "bare backbone"). The bare-body rows of the two
ResNet-18 models stay available as ``centernet_resnet18_body`` and ``centernet_resdcn18_body``.
"""

from __future__ import annotations

import segzoo
from benchmarks.speed import Case, register_case
from benchmarks.speed.cases_semantic import image, normalized

# segzoo model -> official architecture (benchmarks.speed.centernet_official)
OFFICIAL = {"centernet_resnet18": "res_18", "centernet_resdcn18": "resdcn_18"}


def _timm_features(name: str):
    def build():
        import timm

        return timm.create_model(name, features_only=True, pretrained=False)

    return build


def _case(name: str, backbone: str, size: int | None, model: str | None = None) -> list[Case]:
    s = size or 512
    model = model or name
    return [Case(
        name=name, size=f"1x3x{s}x{s}",
        build=lambda: segzoo.build(model, num_classes=80),
        anchor=_timm_features(backbone), anchor_name=f"timm {backbone} features (bare backbone)",
        make_input=image(s), anchor_input=normalized,
    )]


def _official_case(name: str, size: int | None) -> list[Case]:
    """``name`` against the restated official detector holding the same weights (BGR input, as the official)."""
    from benchmarks.speed.centernet_official import official_from_segzoo, official_input

    s = size or 512
    reference = {}

    def build():
        reference["model"] = segzoo.build(name, num_classes=80)
        return reference["model"]

    def anchor():
        model = reference.get("model") or build()
        return official_from_segzoo(model)

    def anchor_input(x):
        model = reference.get("model") or build()
        return official_input(x, model.pixel_mean.to(x.device), model.pixel_std.to(x.device))

    return [Case(
        name=name, size=f"1x3x{s}x{s}", build=build, anchor=anchor,
        anchor_name=f"official CenterNet {OFFICIAL[name]} (restated), eval + no_grad",
        make_input=image(s), anchor_input=anchor_input,
    )]


def _register(name: str, backbone: str) -> None:
    if name in OFFICIAL:
        @register_case(name)
        def official(size: int | None = None) -> list[Case]:
            return _official_case(name, size)

        @register_case(f"{name}_body")
        def body(size: int | None = None) -> list[Case]:
            return _case(f"{name}_body", backbone, size, model=name)
        return

    @register_case(name)
    def cases(size: int | None = None) -> list[Case]:
        return _case(name, backbone, size)


for _name, _backbone in (("centernet_resnet18", "resnet18"), ("centernet_resnet50", "resnet50"),
                         ("centernet_resnet101", "resnet101"), ("centernet_resdcn18", "resnet18"),
                         ("centernet_resdcn101", "resnet101"), ("centernet_dla34", "dla34"),
                         ("centernet_dla34_nodcn", "dla34")):
    _register(_name, _backbone)
