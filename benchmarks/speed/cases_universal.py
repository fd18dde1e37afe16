"""Mask2Former and EoMT against Hugging Face's ``Mask2FormerForUniversalSegmentation`` /
``EomtForUniversalSegmentation`` holding the same random weights (segzoo's converters map them): the
forward to class and mask logits on both sides (the exported path, no merges), one process."""

from __future__ import annotations

import torch

import segzoo
from benchmarks.speed import Case, register_case
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD

_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
_EOMT = {"eomt_vit_small": (384, 12, 6), "eomt_vit_base": (768, 12, 12), "eomt_vit_large": (1024, 24, 16)}


def _images(size: int):
    def make(device: torch.device) -> torch.Tensor:
        return torch.rand(1, 3, size, size, device=device)

    return make


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - _MEAN.to(x.device)) / _STD.to(x.device)


def _hf_mask2former(backbone: str, num_queries: int = 100):
    import transformers

    def anchor():
        torch.manual_seed(0)
        body = transformers.TimmBackboneConfig(backbone=backbone, out_indices=(1, 2, 3, 4),
                                               use_pretrained_backbone=False)
        cfg = transformers.Mask2FormerConfig(backbone_config=body, num_labels=133, num_queries=num_queries)
        return transformers.Mask2FormerForUniversalSegmentation(cfg).eval()

    return anchor


def _hf_eomt(name: str, size: int):
    import transformers

    def anchor():  # HF's position embeddings are for image_size (no interpolation): built for the input
        torch.manual_seed(0)
        width, depth, heads = _EOMT[name]
        cfg = transformers.EomtConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                      num_labels=133, image_size=size)
        return transformers.EomtForUniversalSegmentation(cfg).eval()

    return anchor


def _ours(module, anchor):
    def build():
        ref = anchor()
        m2f = module.__name__.endswith("mask2former")  # (eomt imports Mask2Former too: name the module)
        model = module.Mask2Former if m2f else module.EoMT
        extra = {"backbone": ref.config.backbone_config.backbone} if m2f else {}
        ours = model(**module.hf_build_kwargs(ref.config), **extra).eval()
        ours.load_state_dict(module.map_hf_state_dict(ref.state_dict()))
        return ours.exportable()

    return build


@register_case("mask2former_resnet50")
def mask2former_resnet50(size: int | None = None) -> list[Case]:
    from segzoo.models import mask2former
    s = size or 512
    anchor = _hf_mask2former("resnet50")
    return [Case(name="mask2former_resnet50", size=f"1x3x{s}x{s}", build=_ours(mask2former, anchor), anchor=anchor,
                 anchor_name="HF Mask2FormerForUniversalSegmentation", make_input=_images(s),
                 anchor_input=_normalise)]


@register_case("mask2former_swin_tiny")
def mask2former_swin_tiny(size: int | None = None) -> list[Case]:
    """No anchor: HF's Mask2Former Swin is its own Swin port, not timm's; segzoo's time alone."""
    s = size or 512
    return [Case(name="mask2former_swin_tiny", size=f"1x3x{s}x{s}",
                 build=lambda: segzoo.build("mask2former_swin_tiny").exportable(), make_input=_images(s))]


@register_case("mask2former_resnet18_small")
def mask2former_resnet18_small(size: int | None = None) -> list[Case]:
    s = size or 256
    return [Case(name="mask2former_resnet18_small", size=f"1x3x{s}x{s}",
                 build=lambda: segzoo.build("mask2former_resnet18_small").exportable(), make_input=_images(s))]


def _eomt(name: str, size: int | None) -> list[Case]:
    from segzoo.models import eomt
    s = size or 640
    anchor = _hf_eomt(name, s)
    return [Case(name=name, size=f"1x3x{s}x{s}", build=_ours(eomt, anchor), anchor=anchor,
                 anchor_name="HF EomtForUniversalSegmentation", make_input=_images(s), anchor_input=_normalise)]


@register_case("eomt_vit_small")
def eomt_vit_small(size: int | None = None) -> list[Case]:
    return _eomt("eomt_vit_small", size)


@register_case("eomt_vit_base")
def eomt_vit_base(size: int | None = None) -> list[Case]:
    return _eomt("eomt_vit_base", size)


@register_case("eomt_vit_large")
def eomt_vit_large(size: int | None = None) -> list[Case]:
    return _eomt("eomt_vit_large", size)


@register_case("eomt_vit_tiny_test")
def eomt_vit_tiny_test(size: int | None = None) -> list[Case]:
    s = size or 64
    return [Case(name="eomt_vit_tiny_test", size=f"1x3x{s}x{s}",
                 build=lambda: segzoo.build("eomt_vit_tiny_test", num_classes=3).exportable(),
                 make_input=_images(s))]
