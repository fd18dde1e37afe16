"""Benchmark cases for the semantic families against torchvision / other references."""

from __future__ import annotations

import torch

import segzoo
from segzoo.benchmark import Case, register_case

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


@register_case("fcn_resnet50")
def fcn_resnet50(size: int | None = None) -> list[Case]:
    from torchvision.models.segmentation import fcn_resnet50 as tv_fcn

    s = size or 512
    return [Case(
        name="fcn_resnet50", size=f"1x3x{s}x{s}",
        build=lambda: segzoo.build("fcn_resnet50", num_classes=21),
        anchor=lambda: tv_fcn(weights=None, weights_backbone=None, num_classes=21, aux_loss=True),
        anchor_name="torchvision fcn_resnet50",
        make_input=image(s), anchor_input=normalized, anchor_step=tv_out,
    )]
