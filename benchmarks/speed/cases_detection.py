"""Benchmark cases for Mask R-CNN / Faster R-CNN against torchvision on the same 800 x 800 input.

Both sides run with ``box_score_thresh=0`` so that random weights still give 100
detections per image and the mask branch and mask pasting are timed. segzoo holds the
anchor's (random) weights, converted, so that both do the same work. The training step
is the fine-tuning set-up: frozen BatchNorm and the first backbone stages frozen
(``trainable_backbone_layers=3``) on both sides, 2 images with 3 objects each.
torchvision ships no ResNet-101 Mask R-CNN: its anchor is torchvision's ``MaskRCNN`` on a
ResNet-101 FPN extractor, built with the same recipe as ResNet-50's. The detections-kept
series runs Mask R-CNN at 800 x 800 keeping 100, 300 and 1000 detections on both sides. Panoptic FPN's
anchor is torchvision's Mask R-CNN with detectron2's semantic branch and merge restated here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import segzoo
from benchmarks.speed import Case, register_case, register_series
from segzoo.convert import from_torchvision
from segzoo.models.converters import load_converted
from segzoo.models.mask_rcnn import RCNN_RECIPE, map_rcnn
from segzoo.models.panoptic_fpn import PanopticFPN


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


class SemSegFPNHead(nn.Module):
    """The semantic branch of Panoptic FPN as detectron2's ``SemSegFPNHead`` computes it (restated here:
    detectron2 needs its compiled ops): per FPN level ``max(1, log2(stride / 4))`` blocks of 3x3 conv
    (no bias) + GroupNorm(32) + ReLU, each followed by a 2x bilinear upsampling while the level is
    coarser than stride 4; the levels summed, a 1x1 conv to the classes."""

    def __init__(self, in_channels: int, strides, num_classes: int, channels: int = 128) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            ops: list[nn.Module] = []
            for k in range(max(1, int(math.log2(stride) - 2))):
                ops += [nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                        nn.GroupNorm(32, channels), nn.ReLU(inplace=True)]
                if stride != 4:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*ops))
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features) -> torch.Tensor:
        x = self.scale_heads[0](features[0])
        for head, f in zip(self.scale_heads[1:], features[1:]):
            x = x + head(f)
        return self.predictor(x)


def combine_panoptic(masks, scores, labels, semantic, overlap=0.5, stuff_area=4096, score_thresh=0.5):
    """detectron2's ``combine_semantic_and_instance_outputs`` for one image, restated: instances by
    decreasing score (stopping below ``score_thresh``), each dropped when more than ``overlap`` of its
    mask is taken and otherwise painted on the free pixels; then each stuff label of the semantic
    argmax (0 is "things") on the free pixels when it covers at least ``stuff_area`` of them."""
    seg = torch.zeros_like(semantic, dtype=torch.int32)
    info, current = [], 0
    for i in torch.argsort(-scores):
        score = scores[i].item()
        if score < score_thresh:
            break
        mask = masks[i]
        area = mask.sum().item()
        if area == 0:
            continue
        taken = (mask & (seg > 0)).sum().item()
        if taken / area > overlap:
            continue
        if taken:
            mask = mask & (seg == 0)
        current += 1
        seg[mask] = current
        info.append({"id": current, "isthing": True, "score": score, "category_id": labels[i].item()})
    for label in torch.unique(semantic).tolist():
        if label == 0:
            continue
        mask = (semantic == label) & (seg == 0)
        area = mask.sum().item()
        if area < stuff_area:
            continue
        current += 1
        seg[mask] = current
        info.append({"id": current, "isthing": False, "category_id": label, "area": area})
    return seg, info


class TorchvisionPanopticFPN(nn.Module):
    """torchvision's Mask R-CNN (R-50 FPN, as :func:`_tv_maskrcnn` builds it) + :class:`SemSegFPNHead` on
    its P2-P5, run the way detectron2's ``PanopticFPN`` runs inference: the semantic logits upsampled 4x,
    cropped to the image and resized to the input, the pasted masks thresholded at 0.5, and
    :func:`combine_panoptic`."""

    def __init__(self, size: int, depth: int = 50, num_stuff: int = 53) -> None:
        super().__init__()
        self.det = _tv_maskrcnn(size, True, depth)
        self.sem_seg_head = SemSegFPNHead(256, (4, 8, 16, 32), num_stuff + 1)

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        original = [tuple(im.shape[-2:]) for im in images]
        batch, _ = self.det.transform(images)
        feats = self.det.backbone(batch.tensors)
        proposals, _ = self.det.rpn(batch, feats)
        dets, _ = self.det.roi_heads(feats, proposals, batch.image_sizes)
        dets = self.det.transform.postprocess(dets, batch.image_sizes, original)
        sem = self.sem_seg_head([feats[k] for k in ("0", "1", "2", "3")])
        sem = F.interpolate(sem, scale_factor=4, mode="bilinear", align_corners=False)
        out = []
        for i, d in enumerate(dets):
            (h, w), size = batch.image_sizes[i], original[i]
            logits = F.interpolate(sem[i: i + 1, :, :h, :w], size=size, mode="bilinear", align_corners=False)[0]
            seg, info = combine_panoptic(d["masks"][:, 0] > 0.5, d["scores"], d["labels"], logits.argmax(0))
            out.append({**d, "panoptic_seg": seg, "segments_info": info})
        return out


def _panoptic_anchor(size: int, depth: int = 50):
    def build():
        torch.manual_seed(0)
        return TorchvisionPanopticFPN(size, depth).eval()

    return build


def _panoptic_ours(name: str, size: int, depth: int = 50):
    """segzoo's Panoptic FPN holding the anchor's random weights (80 + 10 unused torchvision thing
    classes, 53 stuff classes): the same detections and semantic map, so the same work downstream."""

    def build():
        anchor = _panoptic_anchor(size, depth)()
        mapped, things = map_rcnn(anchor.det.state_dict(), PanopticFPN)
        mapped.update({f"sem_seg_head.{k}": v for k, v in anchor.sem_seg_head.state_dict().items()})
        model = segzoo.build(name, num_classes=things + 53, num_stuff=53, box_score_thresh=0.0, **RCNN_RECIPE)
        return load_converted(model, mapped)

    return build


def _panoptic(name: str, size: int | None, depth: int = 50) -> list[Case]:
    """Panoptic FPN against torchvision's Mask R-CNN with detectron2's semantic branch and merge (restated
    in :class:`TorchvisionPanopticFPN`: detectron2 itself needs its compiled ops), both with
    ``box_score_thresh=0`` (100 detections) and detectron2's merge thresholds."""
    s = size or 800
    return [Case(name=name, size=f"1x3x{s}x{s}", build=_panoptic_ours(name, s, depth),
                 anchor=_panoptic_anchor(s, depth),
                 anchor_name=f"torchvision maskrcnn_resnet{depth}_fpn + detectron2's semantic FPN head and merge",
                 make_input=_images(s, 1), anchor_input=list)]


@register_case("panoptic_fpn_resnet50")
def panoptic_fpn_resnet50(size: int | None = None) -> list[Case]:
    return _panoptic("panoptic_fpn_resnet50", size)


@register_case("panoptic_fpn_resnet18")
def panoptic_fpn_resnet18(size: int | None = None) -> list[Case]:
    return _panoptic("panoptic_fpn_resnet18", size, depth=18)
