"""Faster R-CNN (Ren et al., NeurIPS 2015) and Mask R-CNN (He et al., ICCV 2017) with an FPN
(Lin et al., CVPR 2017) on any segzoo backbone, in torchvision's form and batched throughout.

As in torchvision, :class:`FasterRCNN` is the detector and :class:`MaskRCNN` is a Faster
R-CNN that adds the mask branch, so a model's class says its task. The key map of torchvision's
checkpoints (:func:`map_rcnn`) is at the end, beside the published weights it converts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from segzoo.backbones import make_backbone
from segzoo.backbones.fpn import FPN
from segzoo.detection.boxes import group_counts, rank_in_group, split_sizes
from segzoo.detection.roi_heads import RoIHeads
from segzoo.detection.rpn import RegionProposalNetwork, TrainTest
from segzoo.hub.published import COCO_90, register_weights, torchvision_entry
from segzoo.models.converters import TORCHVISION, KeyMap, register_key_map, resnet_depth
from segzoo.models.detection_base import DetectionModel, image_shapes
from segzoo.registry import create, entry_class, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD

FPN_STRIDES = (4, 8, 16, 32)


class FasterRCNN(DetectionModel):
    """Backbone (C2-C5) -> FPN (P2-P6) -> RPN -> RoIAlign -> box head; :class:`MaskRCNN` adds a
    mask head.

    Input: ``N x 3 x H x W`` or a list of ``3 x H x W`` float RGB images in [0, 1], any
    size (zero-padded to a multiple of 32 inside, results are in input pixels; resize
    beforehand, the model does not). Output: one dict per image with ``boxes`` (K x 4,
    xyxy), ``scores`` (K), ``labels`` (K, int64, 0-based) and, for Mask R-CNN, ``masks``
    (K x H x W probabilities at the image's size); an empty batch gives ``[]``. With
    ``targets`` (one dict per image: ``boxes``, ``labels`` 0-based, ``masks`` K x H x W for
    Mask R-CNN; empty for images without objects) the output is the dict of losses ``loss_objectness``,
    ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg`` (, ``loss_mask``) and their
    sum ``loss``. The RPN keeps its ``*_train`` numbers of proposals in train mode and its
    ``*_test`` numbers in eval mode, as torchvision does.

    Args:
        num_classes: object classes (background is implicit).
        backbone: a segzoo body (``"hrnet_w18"``) or a timm model with ``features_only``,
            with stride-4..32 feature levels (see :func:`segzoo.backbones.make_backbone`).
        backbone_weights: local weights file for the backbone (timm's layout), or a timm tag (``"imagenet"``).
        frozen_bn: FrozenBatchNorm2d in the backbone; default: True when
            ``backbone_weights`` is given, else False.
        trainable_backbone_layers: backbone stages (from the deepest) that train; the
            stem trains only when this counts every stage (5 for a ResNet). Default: 3 with
            ``backbone_weights``, else all.
        fpn_channels: channels of the FPN levels.
        anchor_sizes: one anchor size per level P2-P6.
        aspect_ratios: anchor height / width ratios.
        rpn_pre_nms_top_n_train: anchors kept per level before NMS in train mode.
        rpn_pre_nms_top_n_test: the same in eval mode.
        rpn_post_nms_top_n_train: proposals kept per image in train mode.
        rpn_post_nms_top_n_test: the same in eval mode.
        rpn_nms_thresh: IoU threshold of the RPN's NMS.
        rpn_fg_iou_thresh: anchors with IoU >= this are positive.
        rpn_bg_iou_thresh: anchors with IoU < this are negative.
        rpn_batch_size_per_image: anchors sampled per image for the RPN losses.
        rpn_positive_fraction: largest share of positive anchors.
        rpn_score_thresh: minimum objectness probability of a proposal.
        box_score_thresh: keep detections scoring above this.
        box_nms_thresh: per-class NMS threshold of the detections.
        box_detections_per_img: most detections per image.
        box_fg_iou_thresh: proposals with IoU >= this are foreground.
        box_bg_iou_thresh: proposals with IoU < this are background.
        box_batch_size_per_image: proposals sampled per image for the head losses.
        box_positive_fraction: largest share of foreground proposals.
        representation_size: width of the box head's two fully connected layers.
        roi_aligned: RoIAlign ``aligned`` flag (False as torchvision; True as detectron2).
        mean: per-channel mean subtracted from [0, 1] RGB input.
        std: per-channel std the input is divided by.
    """

    task = "detection"
    size_divisibility = 32
    class_layers = ("roi_heads.box_predictor",)
    mask_layers: tuple[int, ...] | None = None  # widths of the mask head's convs: None, no mask branch (MaskRCNN's)

    def __init__(
        self,
        num_classes: int = 80,
        backbone: str = "resnet50",
        *,
        backbone_weights: str | os.PathLike | None = None,
        frozen_bn: bool | None = None,
        trainable_backbone_layers: int | None = None,
        fpn_channels: int = 256,
        anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_score_thresh: float = 0.0,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        representation_size: int = 1024,
        roi_aligned: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(num_classes, mean, std)
        pretrained = backbone_weights is not None
        self.backbone = make_backbone(backbone, 32, backbone_weights)
        if pretrained if frozen_bn is None else frozen_bn:
            self.backbone.freeze(bn=True, params=False)
        strides = self.backbone.strides
        self.levels = tuple(strides.index(s) for s in FPN_STRIDES if s in strides)
        if len(self.levels) != len(FPN_STRIDES):
            raise ValueError(
                f"backbone {backbone!r} has feature strides {strides}; the FPN needs levels at strides "
                f"{FPN_STRIDES} (C2-C5): pick a backbone with a 4-stage pyramid (ResNet, ConvNeXt, "
                "EfficientNet, MobileNet, HRNet, ...)")
        stages = self.backbone.num_stages
        if trainable_backbone_layers is None:
            trainable_backbone_layers = 3 if pretrained else stages
        if not 0 <= trainable_backbone_layers <= stages:
            raise ValueError(f"trainable_backbone_layers must be in [0, {stages}] for this backbone "
                             f"({stages} stages), got {trainable_backbone_layers}")
        self.backbone.freeze_stages(stages - trainable_backbone_layers)
        self.fpn = FPN([self.backbone.channels[i] for i in self.levels], FPN_STRIDES, fpn_channels)
        if len(anchor_sizes) != len(self.fpn.strides):
            raise ValueError(f"anchor_sizes needs one size per FPN level P2-P6 ({len(self.fpn.strides)}), "
                             f"got {tuple(anchor_sizes)}")
        self.rpn = RegionProposalNetwork(
            in_channels=fpn_channels, anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios,
            pre_nms_top_n=TrainTest(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
            post_nms_top_n=TrainTest(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
            nms_thresh=rpn_nms_thresh, fg_iou_thresh=rpn_fg_iou_thresh, bg_iou_thresh=rpn_bg_iou_thresh,
            batch_size_per_image=rpn_batch_size_per_image, positive_fraction=rpn_positive_fraction,
            score_thresh=rpn_score_thresh)
        self.roi_heads = RoIHeads(
            num_classes, in_channels=fpn_channels, strides=FPN_STRIDES, representation_size=representation_size,
            roi_aligned=roi_aligned, fg_iou_thresh=box_fg_iou_thresh, bg_iou_thresh=box_bg_iou_thresh,
            batch_size_per_image=box_batch_size_per_image, positive_fraction=box_positive_fraction,
            score_thresh=box_score_thresh, nms_thresh=box_nms_thresh, detections_per_img=box_detections_per_img,
            mask_layers=self.mask_layers)

    @property
    def has_masks(self) -> bool:
        """Whether the model predicts masks (Mask R-CNN), read from its modules."""
        return self.roi_heads.mask_head is not None

    def _pad_targets(self, targets: list[dict], shape: Sequence[int]) -> dict:
        """Per-image targets -> ``(N, G, ...)`` tensors padded to the most objects (at least 1)."""
        device = targets[0]["boxes"].device
        num = [len(t["boxes"]) for t in targets]
        g = max(1, max(num))
        boxes = pad_sequence([t["boxes"] for t in targets], batch_first=True)  # (N, G', 4)
        labels = pad_sequence([t["labels"] for t in targets], batch_first=True)
        boxes = F.pad(boxes, (0, 0, 0, g - boxes.shape[1]))
        labels = F.pad(labels, (0, g - labels.shape[1]))
        counts = torch.tensor(num, device=device)
        out = {"boxes": boxes, "labels": labels,
               "valid": torch.arange(g, device=device)[None] < counts[:, None]}
        if self.has_masks:
            hp, wp = shape
            # each image's masks on the batch canvas, edge-padded: RoIAlign then samples them as it
            # samples the unpadded masks (see segzoo.detection.roi_heads.mask_targets)
            masks = [F.pad(t["masks"].to(boxes.dtype)[:, None],
                           (0, wp - t["masks"].shape[-1], 0, hp - t["masks"].shape[-2]), mode="replicate")[:, 0]
                     for t in targets]
            masks = pad_sequence(masks, batch_first=True)  # (N, G', Hp, Wp)
            masks = F.pad(masks, (0, 0, 0, 0, 0, g - masks.shape[1]))
            out["masks"] = masks.flatten(0, 1)  # (N*G, Hp, Wp)
        return out

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The FPN levels of a preprocessed batch (what the RPN, the heads and the exports all start from)."""
        feats = self.backbone(x)
        return self.fpn([feats[i] for i in self.levels])

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor],
                targets: Sequence[dict] | None = None) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        if self.is_empty(images):
            return self.empty_result(targets)
        if not isinstance(images, torch.Tensor):
            images = list(images)
        x, sizes = self.preprocess(images)
        shapes = image_shapes(images)  # host ints: no sync
        feats = self.features(x)
        padded = None
        if targets is not None:
            checked = self.check_targets(targets, shapes, self.has_masks)
            padded = self._pad_targets(checked, x.shape[-2:])
        proposals, image_idx, losses = self.rpn(feats, x.shape[-2:], sizes, padded)
        if targets is not None:
            losses.update(self.roi_heads(feats, proposals, image_idx, sizes, padded))
            losses["loss"] = sum(losses.values())
            return losses
        canvas = (max(h for h, _ in shapes), max(w for _, w in shapes))
        det = self.roi_heads(feats, proposals, image_idx, sizes, canvas=canvas)
        n = len(shapes)
        keys = ["boxes", "scores", "labels"] + (["masks"] if self.has_masks else [])
        sizes_per_image = split_sizes(det["image_idx"], n)  # the one host sync
        parts = {k: torch.split(det[k], sizes_per_image) for k in keys}
        results = [{k: parts[k][i] for k in keys} for i in range(n)]
        if self.has_masks:
            for r, (h, w) in zip(results, shapes):  # crop the canvas to each image
                r["masks"] = r["masks"][:, :h, :w]
        return results

    def exportable(self, max_detections: int = 100) -> RCNNExport:
        """The inference path with fixed-size outputs, for ``torch.export`` and ONNX."""
        return RCNNExport(self, max_detections)


class MaskRCNN(FasterRCNN):
    """Mask R-CNN: :class:`FasterRCNN` plus a mask branch (14x14 RoIAlign, four 3x3 convs, a
    2x2 deconvolution and per-class 28x28 mask logits). Input and output as in
    :class:`FasterRCNN`, with ``masks`` in the predictions and ``loss_mask`` in the losses.

    Args:
        num_classes: object classes (background is implicit).
        mask_layers: widths of the mask head's 3x3 convs.
        **kwargs: :class:`FasterRCNN`'s arguments.
    """

    task = "instance"
    class_layers = ("roi_heads.box_predictor", "roi_heads.mask_head.mask_logits")

    def __init__(self, num_classes: int = 80, *, mask_layers: Sequence[int] = (256, 256, 256, 256), **kwargs) -> None:
        self.mask_layers = tuple(mask_layers)  # FasterRCNN.__init__ builds the RoI heads with this mask branch
        super().__init__(num_classes, **kwargs)


class RCNNExport(nn.Module):
    """``images (N x 3 x H x W) -> boxes, scores, labels, [masks,] num_detections``, padded to K.

    ``boxes`` ``(N, K, 4)``, ``scores`` ``(N, K)`` (0 for padding), ``labels`` ``(N, K)``
    (-1 for padding), ``masks`` ``(N, K, H, W)`` (Mask R-CNN only) and ``num_detections``
    ``(N,)``: the first ``num_detections`` rows of each image are what ``model(images)`` returns.
    """

    def __init__(self, model: FasterRCNN, max_detections: int = 100) -> None:
        super().__init__()
        self.model = model
        self.max_detections = max_detections

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        x, sizes = m.preprocess(images)
        feats = m.features(x)
        proposals, image_idx, _ = m.rpn(feats, x.shape[-2:], sizes)
        det = m.roi_heads(feats, proposals, image_idx, sizes, canvas=tuple(images.shape[-2:]))
        n, k = images.shape[0], self.max_detections
        rank = rank_in_group(det["image_idx"], n)  # (D,) row of each detection in its image
        keep = rank < k
        img, rank = det["image_idx"][keep], rank[keep]
        boxes = det["boxes"].new_zeros(n, k, 4).index_put((img, rank), det["boxes"][keep])
        scores = det["scores"].new_zeros(n, k).index_put((img, rank), det["scores"][keep])
        labels = torch.full((n, k), -1, dtype=torch.int64, device=x.device).index_put(
            (img, rank), det["labels"][keep])
        num = group_counts(img, n)
        if not m.has_masks:
            return boxes, scores, labels, num
        h, w = images.shape[-2:]
        masks = det["masks"].new_zeros(n, k, h, w).index_put((img, rank), det["masks"][keep])
        return boxes, scores, labels, masks, num


@register_model
def maskrcnn_resnet50_fpn(**kwargs) -> MaskRCNN:
    """Mask R-CNN with a ResNet-50 FPN (torchvision's maskrcnn_resnet50_fpn)."""
    return create(MaskRCNN, "maskrcnn_resnet50_fpn", {"backbone": "resnet50"}, kwargs)


@register_model
def maskrcnn_resnet101_fpn(**kwargs) -> MaskRCNN:
    """Mask R-CNN with a ResNet-101 FPN."""
    return create(MaskRCNN, "maskrcnn_resnet101_fpn", {"backbone": "resnet101"}, kwargs)


@register_model
def maskrcnn_resnet18_fpn(**kwargs) -> MaskRCNN:
    """Mask R-CNN with a ResNet-18 FPN, the size a CPU can train."""
    return create(MaskRCNN, "maskrcnn_resnet18_fpn", {"backbone": "resnet18"}, kwargs)


@register_model
def maskrcnn_convnext_tiny_fpn(**kwargs) -> MaskRCNN:
    """Mask R-CNN with a ConvNeXt-T FPN."""
    return create(MaskRCNN, "maskrcnn_convnext_tiny_fpn", {"backbone": "convnext_tiny"}, kwargs)


@register_model
def fasterrcnn_resnet50_fpn(**kwargs) -> FasterRCNN:
    """Faster R-CNN with a ResNet-50 FPN (torchvision's fasterrcnn_resnet50_fpn)."""
    return create(FasterRCNN, "fasterrcnn_resnet50_fpn", {"backbone": "resnet50"}, kwargs)


@register_model
def fasterrcnn_resnet18_fpn(**kwargs) -> FasterRCNN:
    """Faster R-CNN with a ResNet-18 FPN."""
    return create(FasterRCNN, "fasterrcnn_resnet18_fpn", {"backbone": "resnet18"}, kwargs)


@register_model
def fasterrcnn_resnet101_fpn(**kwargs) -> FasterRCNN:
    """Faster R-CNN with a ResNet-101 FPN."""
    return create(FasterRCNN, "fasterrcnn_resnet101_fpn", {"backbone": "resnet101"}, kwargs)


@register_model
def maskrcnn_mobilenetv2_fpn(**kwargs) -> MaskRCNN:
    """Mask R-CNN with an FPN on timm's mobilenetv2_100 (ImageNet: torchvision's file, from its wheel)."""
    return create(MaskRCNN, "maskrcnn_mobilenetv2_fpn", {"backbone": "mobilenetv2_100"}, kwargs)


@register_model
def fasterrcnn_mobilenetv2_fpn(**kwargs) -> FasterRCNN:
    """Faster R-CNN with an FPN on timm's mobilenetv2_100 (ImageNet: torchvision's file, from its wheel)."""
    return create(FasterRCNN, "fasterrcnn_mobilenetv2_fpn", {"backbone": "mobilenetv2_100"}, kwargs)


# ---------------------------------------------------------------------------- key maps
# torchvision Mask R-CNN / Faster R-CNN (v1, ResNet-50 FPN). ``backbone.body.*`` is unchanged (timm's
# ResNet has torchvision's names), ``backbone.fpn.*`` becomes ``fpn.*``, the mask head's
# ``mask_predictor`` joins ``roi_heads.mask_head``. torchvision's class 0 is background: the
# classifier keeps it (segzoo's classifier also has background first) while the box regressor and
# mask predictor drop its unused outputs, so segzoo label ``c`` is torchvision label ``c + 1``.
# BatchNorm counters are dropped: converted models use frozen BatchNorm in the backbone and train
# its last 3 stages (``conv1`` and ``layer1`` frozen), as torchvision's trained detectors do.

_RULES = (
    (r"^backbone\.body\.(.*)$", r"backbone.body.\1"),
    (r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(?:0\.)?(weight|bias)$", r"fpn.\1.\2.\3"),
    (r"^rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)$", r"rpn.head.conv.\1"),
    (r"^rpn\.head\.(cls_logits|bbox_pred)\.(weight|bias)$", r"rpn.head.\1.\2"),
    (r"^roi_heads\.box_head\.(fc6|fc7)\.(weight|bias)$", r"roi_heads.box_head.\1.\2"),
    (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$", r"roi_heads.box_predictor.\1.\2"),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)$", r"roi_heads.mask_head.deconv.\1"),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)$", r"roi_heads.mask_head.mask_logits.\1"),
)

#: builder arguments of a Faster/Mask R-CNN converted from torchvision: the recipe of
#: torchvision's trained detectors (``maskrcnn_resnet50_fpn(weights=...)``: frozen BatchNorm in the
#: backbone, the stem and layer1 not trained); a build argument of the same name overrides it
RCNN_RECIPE = MappingProxyType({"frozen_bn": True, "trainable_backbone_layers": 3})


def _mask_conv(key: str) -> str | None:
    """``mask_head.{i}.0.weight`` (new torchvision) or ``mask_head.mask_fcn{i+1}.weight`` (old)."""
    m = re.match(r"^roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)$", key)
    if m:
        return f"roi_heads.mask_head.convs.{m.group(1)}.{m.group(2)}"
    m = re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$", key)
    if m:
        return f"roi_heads.mask_head.convs.{int(m.group(1)) - 1}.{m.group(2)}"
    return None


def describe_rcnn(state: dict) -> tuple[str, str]:
    """What a torchvision detector state dict holds and which segzoo models it converts into."""
    masks = any(k.startswith("roi_heads.mask_") for k in state)
    arch = "Mask R-CNN" if masks else "Faster R-CNN"
    depth = resnet_depth(state, "backbone.body.")
    body = f"ResNet-{depth}" if depth else "ResNet"
    family = "maskrcnn" if masks else "fasterrcnn"
    resnet = f"resnet{depth or 50}"
    fits = f"convert it into a {family}_* model with backbone='{resnet}' (e.g. {family}_{resnet}_fpn)"
    return f"a torchvision {arch} with a {body} FPN backbone", fits


def map_rcnn(state: dict, target: str | type) -> tuple[dict[str, torch.Tensor], int]:
    """Map a torchvision ``maskrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` state dict.

    Args:
        state: the torchvision state dict.
        target: the segzoo model name or class: a :class:`MaskRCNN` keeps the mask branch (and
            needs one); a plain Faster R-CNN drops it.

    Returns:
        The segzoo state dict and ``num_classes`` (object classes, torchvision's minus one).
    """
    cls = entry_class(target) if isinstance(target, str) else target
    name = target if isinstance(target, str) else cls.__name__
    if "roi_heads.box_predictor.cls_score.weight" not in state:
        raise KeyError("no roi_heads.box_predictor.cls_score.weight: this is not a torchvision "
                       "Faster/Mask R-CNN state dict")
    has_mask = any(k.startswith("roi_heads.mask_") for k in state)
    want_mask = issubclass(cls, MaskRCNN)
    if want_mask and not has_mask:
        raise ValueError(f"the state dict has no mask head; convert it into a Faster R-CNN model "
                         f"(fasterrcnn_*), not {name}")
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if not want_mask and k.startswith("roi_heads.mask_"):
            continue  # a Mask R-CNN checkpoint converted to Faster R-CNN: drop the mask branch
        new = _mask_conv(k)
        for pattern, repl in _RULES:
            if new is None and re.match(pattern, k):
                new = re.sub(pattern, repl, k)
        if new is None:
            raise KeyError(f"unexpected key {k!r} in a torchvision {name} state dict")
        if new.startswith(("roi_heads.box_predictor.bbox_pred", "roi_heads.mask_head.mask_logits")):
            step = 4 if "bbox_pred" in new else 1
            v = v[step:]  # drop the background class's outputs
        out[new] = v
    return out, int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1


register_key_map(TORCHVISION, FasterRCNN, KeyMap(map_rcnn, lambda mapped: dict(RCNN_RECIPE), describe_rcnn))

# ---------------------------------------------------------------------------- published weights
# read from torchvision's Weights enums; torchvision's 1-based labels become segzoo's 0-based ones
register_weights(
    torchvision_entry("maskrcnn_resnet50_fpn", "tv_coco", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1", COCO_90,
                      detection=True),
    torchvision_entry("fasterrcnn_resnet50_fpn", "tv_coco", "FasterRCNN_ResNet50_FPN_Weights.COCO_V1", COCO_90,
                      detection=True),
)
