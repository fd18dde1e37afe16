"""Benchmark cases for the semantic families against torchvision / other references."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import segzoo
from benchmarks.speed import Case, register_case

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def image(size: int, batch: int = 1):
    def make(device: torch.device) -> torch.Tensor:
        return torch.rand(batch, 3, size, size, device=device)

    return make


def normalized(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN.to(x.device)) / STD.to(x.device)


def tv_out(model, x):
    return model(x)["out"]


def _vs_torchvision_fcn(name: str, anchor_name: str, size: int | None, tv_fn: str = "fcn_resnet50"
                        ) -> list[Case]:
    """``name`` against torchvision's FCN ``tv_fn`` (21 classes, aux) on the same input."""
    import torchvision.models.segmentation as tvseg

    s = size or 512
    return [Case(
        name=name, size=f"1x3x{s}x{s}",
        build=lambda: segzoo.build(name, num_classes=21),
        anchor=lambda: getattr(tvseg, tv_fn)(weights=None, weights_backbone=None, num_classes=21, aux_loss=True),
        anchor_name=anchor_name,
        make_input=image(s), anchor_input=normalized, anchor_step=tv_out,
    )]


@register_case("fcn_resnet50")
def fcn_resnet50(size: int | None = None) -> list[Case]:
    return _vs_torchvision_fcn("fcn_resnet50", "torchvision fcn_resnet50", size)


@register_case("fcn_resnet101")
def fcn_resnet101(size: int | None = None) -> list[Case]:
    return _vs_torchvision_fcn("fcn_resnet101", "torchvision fcn_resnet101", size, "fcn_resnet101")


def _smp():
    """segmentation_models_pytorch if installed (only ever a benchmark reference)."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return None
    return smp


def _tv_case(name: str, tv_fn: str, size: int | None, mode: str = "infer", batch: int = 1) -> Case:
    """segzoo ``name`` against torchvision ``tv_fn``; in train mode both compute their main
    and auxiliary cross-entropy losses (aux weight 0.5) and backpropagate."""
    import torchvision.models.segmentation as tvseg

    s = size or 512
    train = mode == "train"
    return Case(
        name=name + (" (train)" if train else ""), size=f"{batch}x3x{s}x{s}",
        build=lambda: segzoo.build(name, num_classes=21),
        anchor=lambda: getattr(tvseg, tv_fn)(weights=None, weights_backbone=None,
                                             num_classes=21, aux_loss=True),
        anchor_name=f"torchvision {tv_fn}", mode=mode,
        make_input=_image_and_mask(s, batch) if train else image(s, batch),
        anchor_input=_normalized_pair if train else normalized,
        step=_loss_backward if train else None,
        anchor_step=_tv_loss_backward if train else tv_out,
    )


def _image_and_mask(size: int, batch: int):
    def make(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(batch, 3, size, size, device=device)
        return x, torch.randint(0, 21, (batch, size, size), device=device)

    return make


def _normalized_pair(inputs):
    return normalized(inputs[0]), inputs[1]


def _loss_backward(model, inputs):
    loss = model(*inputs)["loss"]
    loss.backward()
    return loss


def _tv_loss_backward(model, inputs):
    x, t = inputs
    out = model(x)
    loss = F.cross_entropy(out["out"], t, ignore_index=255)
    loss = loss + 0.5 * F.cross_entropy(out["aux"], t, ignore_index=255)
    loss.backward()
    return loss


@register_case("deeplabv3_resnet50")
def deeplabv3_resnet50(size: int | None = None) -> list[Case]:
    return [_tv_case("deeplabv3_resnet50", "deeplabv3_resnet50", size),
            _tv_case("deeplabv3_resnet50", "deeplabv3_resnet50", size, mode="train", batch=2)]


@register_case("deeplabv3_resnet101")
def deeplabv3_resnet101(size: int | None = None) -> list[Case]:
    return [_tv_case("deeplabv3_resnet101", "deeplabv3_resnet101", size)]


@register_case("deeplabv3_mobilenetv3_large")
def deeplabv3_mobilenetv3_large(size: int | None = None) -> list[Case]:
    return [_tv_case("deeplabv3_mobilenetv3_large", "deeplabv3_mobilenet_v3_large", size)]


def _smp_case(name: str, arch: str, size: int | None, **smp_kwargs) -> Case:
    """segzoo ``name`` against smp ``arch`` on the same encoder; no anchor without smp."""
    smp = _smp()
    s = size or 512
    anchor = None
    if smp is not None:
        def anchor():
            return getattr(smp, arch)(encoder_weights=None, classes=21, **smp_kwargs)
    encoder = smp_kwargs.get("encoder_name", "")
    return Case(
        name=name, size=f"1x3x{s}x{s}",
        build=lambda: segzoo.build(name, num_classes=21),
        anchor=anchor,
        anchor_name=f"smp {arch}({encoder})" if smp else "smp not installed",
        make_input=image(s), anchor_input=normalized,
    )


def _unet_case(name: str, encoder: str):
    # the same network: smp's Unet has the same decoder layout; "tu-" encoders are timm's own models
    @register_case(name)
    def cases(size: int | None = None) -> list[Case]:
        return [_smp_case(name, "Unet", size, encoder_name=encoder)]

    return cases


for _name, _encoder in (("unet_resnet18", "resnet18"), ("unet_resnet34", "resnet34"), ("unet_resnet50", "resnet50"),
                        ("unet_efficientnet_b0", "tu-efficientnet_b0"), ("unet_convnext_tiny", "tu-convnext_tiny")):
    _unet_case(_name, _encoder)


@register_case("unet")
def unet(size: int | None = None) -> list[Case]:
    # the original U-Net (no pretrained encoder): no library ships it, so no anchor
    s = size or 512
    return [Case(name="unet", size=f"1x3x{s}x{s}", build=lambda: segzoo.build("unet", num_classes=21),
                 make_input=image(s))]


def _deeplabv3plus(name: str, encoder: str, size: int | None) -> list[Case]:
    # smp's DeepLabV3+ (output stride 16, 48-channel low-level projection) uses separable
    # convolutions in ASPP and decoder: a close reference, not the same network
    return [_smp_case(name, "DeepLabV3Plus", size, encoder_name=encoder, encoder_output_stride=16)]


@register_case("deeplabv3plus_resnet50")
def deeplabv3plus_resnet50(size: int | None = None) -> list[Case]:
    return _deeplabv3plus("deeplabv3plus_resnet50", "resnet50", size)


@register_case("deeplabv3plus_resnet101")
def deeplabv3plus_resnet101(size: int | None = None) -> list[Case]:
    return _deeplabv3plus("deeplabv3plus_resnet101", "resnet101", size)


# no PSPNet runs here with the paper's dilated encoder (smp's PSPNet cuts the encoder at
# stride 8 instead, a much smaller network); torchvision's FCN shares the dilated ResNet at output stride 8
@register_case("pspnet_resnet50")
def pspnet_resnet50(size: int | None = None) -> list[Case]:
    return _vs_torchvision_fcn("pspnet_resnet50", "torchvision fcn_resnet50 (same dilated encoder)", size)


@register_case("pspnet_resnet101")
def pspnet_resnet101(size: int | None = None) -> list[Case]:
    return _vs_torchvision_fcn("pspnet_resnet101", "torchvision fcn_resnet101 (same dilated encoder)", size,
                               "fcn_resnet101")
