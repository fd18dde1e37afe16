"""Benchmark cases for SegFormer and UPerNet against smp's ``Segformer`` and ``UPerNet``.

SegFormer-BN runs against ``smp.Segformer(encoder_name="mit_bN")`` (the same network: same
parameter count, 256/768-wide MLP head). UPerNet runs against ``smp.UPerNet`` on the same timm
body with a 512-wide decoder; in inference neither runs an auxiliary head (segzoo's is only used
for the loss). The decoders compute the same layers (``segzoo convert --from smp`` maps smp's weights into
segzoo's UPerNet with equal stride-4 logits); smp also LayerNorms the ResNet maps, which segzoo's
``upernet_resnet50`` does not (see docs/models/upernet.md).
"""

from __future__ import annotations

import segzoo
from benchmarks.speed import Case, register_case
from benchmarks.speed.cases_semantic import _smp, image, normalized


def _case(name: str, arch: str, size: int | None, classes: int = 150, **smp_kwargs) -> Case:
    smp = _smp()
    s = size or 512
    anchor = None
    if smp is not None:
        def anchor():
            return getattr(smp, arch)(encoder_weights=None, classes=classes, **smp_kwargs)
    return Case(
        name=name, size=f"1x3x{s}x{s}",
        build=lambda: segzoo.build(name, num_classes=classes),
        anchor=anchor,
        anchor_name=f"smp {arch}({smp_kwargs.get('encoder_name', '')})" if smp else "smp not installed",
        make_input=image(s), anchor_input=normalized,
    )


def _segformer(variant: str) -> None:
    @register_case(f"segformer_{variant}")
    def cases(size: int | None = None) -> list[Case]:
        return [_case(f"segformer_{variant}", "Segformer", size, encoder_name=f"mit_{variant}",
                      decoder_segmentation_channels=256 if variant in ("b0", "b1") else 768)]


for _v in ("b0", "b1", "b2", "b3", "b4", "b5"):
    _segformer(_v)


@register_case("upernet_convnext_tiny")
def upernet_convnext_tiny(size: int | None = None) -> list[Case]:
    return [_case("upernet_convnext_tiny", "UPerNet", size, encoder_name="tu-convnext_tiny", decoder_channels=512)]


@register_case("upernet_swin_tiny")
def upernet_swin_tiny(size: int | None = None) -> list[Case]:
    # timm's Swin in smp is built for one input size (segzoo's takes any: dynamic_img_size)
    return [_case("upernet_swin_tiny", "UPerNet", size, encoder_name="tu-swin_tiny_patch4_window7_224",
                  decoder_channels=512, img_size=size or 512)]


@register_case("upernet_resnet50")
def upernet_resnet50(size: int | None = None) -> list[Case]:
    return [_case("upernet_resnet50", "UPerNet", size, encoder_name="resnet50", decoder_channels=512)]
