"""Benchmark cases for Mask R-CNN / Faster R-CNN against torchvision on the same 800 x 800 input.

Both sides run with ``box_score_thresh=0`` so that random weights still give 100
detections per image and the mask branch and mask pasting are timed. segzoo holds the
anchor's (random) weights, converted, so that both do the same work. The training step
is the fine-tuning set-up: frozen BatchNorm and the first backbone stages frozen
(``trainable_backbone_layers=3``) on both sides, 2 images with 3 objects each.
torchvision ships no ResNet-101 Mask R-CNN: its anchor is torchvision's ``MaskRCNN`` on a
ResNet-101 FPN extractor, built with the same recipe as ResNet-50's. The detections-kept
series runs Mask R-CNN at 800 x 800 keeping 100, 300 and 1000 detections on both sides.
"""

from __future__ import annotations

import torch

import segzoo
from benchmarks.speed import Case, register_case, register_series
from segzoo.convert import from_torchvision


def _tv_maskrcnn(size: int, with_mask: bool = True, depth: int = 50, detections: int = 100):
    """torchvision's ResNet FPN detector as built with a pretrained backbone (frozen BN, 3 stages)."""
    import torchvision.models
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    resnet = getattr(torchvision.models, f"resnet{depth}")(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, 3)
    cls = MaskRCNN if with_mask else FasterRCNN
    return cls(backbone, num_classes=91, min_size=size, max_size=size, box_score_thresh=0.0,
               box_detections_per_img=detections)


def _anchor(size: int, with_mask: bool, depth: int = 50, detections: int = 100):
    def build():
        torch.manual_seed(0)
        return _tv_maskrcnn(size, with_mask, depth, detections)

    return build


def _ours(name: str, size: int, with_mask: bool, depth: int = 50, detections: int = 100):
    """segzoo holding the anchor's random weights: the same proposals, so the same work downstream."""

    def build():
        return from_torchvision(_anchor(size, with_mask, depth, detections)().state_dict(), name,
                                trainable_backbone_layers=3, box_score_thresh=0.0,
                                box_detections_per_img=detections)

    return build


def _images(size: int, batch: int):
    def make(device: torch.device) -> torch.Tensor:
        return torch.rand(batch, 3, size, size, device=device)

    return make


def _train_input(size: int):
    def make(device: torch.device) -> tuple[torch.Tensor, list[dict]]:
        g = torch.Generator().manual_seed(0)
        images = torch.rand(2, 3, size, size, generator=g)
        targets = []
        for _ in range(2):
            xy = torch.rand(3, 2, generator=g) * size * 0.6
            wh = 40 + torch.rand(3, 2, generator=g) * size * 0.3
            boxes = torch.cat([xy, xy + wh], 1).round()
            masks = torch.zeros(3, size, size)
            for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
                masks[k, y1:y2, x1:x2] = 1
            targets.append({"boxes": boxes.to(device), "labels": torch.tensor([0, 3, 7], device=device),
                            "masks": masks.to(device)})
        return images.to(device), targets

    return make


def _tv_targets(inputs):
    images, targets = inputs
    tv = [{"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"].to(torch.uint8)} for t in targets]
    return list(images), tv


def _train_step(model, inputs):
    images, targets = inputs
    loss = model(images, targets)["loss"]
    loss.backward()
    return loss


def _tv_train_step(model, inputs):
    images, targets = inputs
    loss = sum(model(images, targets).values())
    loss.backward()
    return loss


def _cases(name: str, with_mask: bool, size: int | None, depth: int = 50) -> list[Case]:
    s = size or 800
    # torchvision registers only the ResNet-50 detectors; other depths are its classes on its FPN extractor
    anchor_name = (f"torchvision {name}" if depth == 50
                   else f"torchvision {'MaskRCNN' if with_mask else 'FasterRCNN'}(resnet{depth} FPN)")
    return [
        Case(name=name, size=f"1x3x{s}x{s}", build=_ours(name, s, with_mask, depth),
             anchor=_anchor(s, with_mask, depth), anchor_name=anchor_name,
             make_input=_images(s, 1), anchor_input=list),
        Case(name=name, size=f"2x3x{s}x{s}", mode="train", build=_ours(name, s, with_mask, depth),
             anchor=_anchor(s, with_mask, depth), anchor_name=anchor_name,
             make_input=_train_input(s), anchor_input=_tv_targets,
             step=_train_step, anchor_step=_tv_train_step),
    ]


@register_case("maskrcnn_resnet50_fpn")
def maskrcnn_resnet50_fpn(size: int | None = None) -> list[Case]:
    return _cases("maskrcnn_resnet50_fpn", True, size)


@register_case("maskrcnn_resnet101_fpn")
def maskrcnn_resnet101_fpn(size: int | None = None) -> list[Case]:
    s = size or 800
    name = "maskrcnn_resnet101_fpn"
    return [Case(name=name, size=f"1x3x{s}x{s}", build=_ours(name, s, True, depth=101),
                 anchor=_anchor(s, True, depth=101), anchor_name="torchvision MaskRCNN(resnet101 FPN)",
                 make_input=_images(s, 1), anchor_input=list)]


DETECTIONS_KEPT = (100, 300, 1000)


@register_series("maskrcnn_resnet50_fpn detections")
def maskrcnn_detections() -> list[Case]:
    """Mask R-CNN at 800 x 800 keeping 100, 300, 1000 detections (score threshold 0 on both sides)."""
    name = "maskrcnn_resnet50_fpn"
    return [Case(name=name, size="1x3x800x800", build=_ours(name, 800, True, detections=k),
                 anchor=_anchor(800, True, detections=k), anchor_name=f"torchvision {name}",
                 make_input=_images(800, 1), anchor_input=list, extra={"series": "detections kept", "x": k,
                                                                      "same_as_main": k == 100})
            for k in DETECTIONS_KEPT]


@register_case("fasterrcnn_resnet50_fpn")
def fasterrcnn_resnet50_fpn(size: int | None = None) -> list[Case]:
    return _cases("fasterrcnn_resnet50_fpn", False, size)


@register_case("maskrcnn_resnet18_fpn")
def maskrcnn_resnet18_fpn(size: int | None = None) -> list[Case]:
    return _cases("maskrcnn_resnet18_fpn", True, size, depth=18)


@register_case("fasterrcnn_resnet18_fpn")
def fasterrcnn_resnet18_fpn(size: int | None = None) -> list[Case]:
    return _cases("fasterrcnn_resnet18_fpn", False, size, depth=18)


@register_case("fasterrcnn_resnet101_fpn")
def fasterrcnn_resnet101_fpn(size: int | None = None) -> list[Case]:
    s = size or 800
    name = "fasterrcnn_resnet101_fpn"
    return [Case(name=name, size=f"1x3x{s}x{s}", build=_ours(name, s, False, depth=101),
                 anchor=_anchor(s, False, depth=101), anchor_name="torchvision FasterRCNN(resnet101 FPN)",
                 make_input=_images(s, 1), anchor_input=list)]


@register_case("maskrcnn_convnext_tiny_fpn")
def maskrcnn_convnext_tiny_fpn(size: int | None = None) -> list[Case]:
    """No anchor: torchvision has no ConvNeXt detector; the row gives segzoo's time alone."""
    s = size or 800
    name = "maskrcnn_convnext_tiny_fpn"

    def build():
        return segzoo.build(name, box_score_thresh=0.0)

    return [Case(name=name, size=f"1x3x{s}x{s}", build=build, make_input=_images(s, 1))]


def _panoptic(name: str, size: int | None) -> list[Case]:
    """No anchor: detectron2, the only library with Panoptic FPN, needs its compiled ops; the row gives
    segzoo's time alone (Mask R-CNN's anchor rows time the shared parts)."""
    s = size or 800

    def build():
        return segzoo.build(name, box_score_thresh=0.0)

    return [Case(name=name, size=f"1x3x{s}x{s}", build=build, make_input=_images(s, 1))]


@register_case("panoptic_fpn_resnet50")
def panoptic_fpn_resnet50(size: int | None = None) -> list[Case]:
    return _panoptic("panoptic_fpn_resnet50", size)


@register_case("panoptic_fpn_resnet18")
def panoptic_fpn_resnet18(size: int | None = None) -> list[Case]:
    return _panoptic("panoptic_fpn_resnet18", size)
