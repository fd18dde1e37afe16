"""CenterNet (Zhou, Wang and Krähenbühl, "Objects as Points", 2019) on timm backbones.

Each object is the peak of its class heatmap at output stride 4; the size and the
sub-cell offset of its box are regressed at that peak. No anchors and no NMS: a 3x3
max-pool keeps the peaks. Targets, losses and decoding live in
:mod:`segzoo.detection.centernet`; the necks in :mod:`segzoo.models.centernet_necks`.

Registered variants and the official architectures they reproduce (``--arch``):
``centernet_resnet{18,50,101}`` (``res_*``), ``centernet_resdcn{18,101}`` (``resdcn_*``),
``centernet_dla34`` (``dla_34``) and ``centernet_dla34_nodcn`` (``dlav0_34``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones import make_backbone
from segzoo.detection import centernet as ct
from segzoo.detection.boxes import clip_boxes
from segzoo.models.centernet_necks import NECKS
from segzoo.models.detection_base import DetectionModel, image_shapes
from segzoo.published import COCO_80, WeightsEntry, register_weights
from segzoo.registry import create, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD


class CenterNetHead(nn.Module):
    """Three small heads on the stride-4 map: ``3x3 conv -> ReLU -> 1x1 conv`` each.

    ``heatmap`` (``num_classes`` logits, last bias -2.19 so that the initial
    probability is 0.1), ``size`` (box width and height in output cells) and ``offset``
    (sub-cell centre x and y). Indices ``0`` and ``2`` match the official ``hm``/``wh``/``reg``.
    """

    def __init__(self, in_channels: int, num_classes: int, head_conv: int = 64) -> None:
        super().__init__()

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_channels, head_conv, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(head_conv, out, 1))

        self.heatmap = head(num_classes)
        self.size = head(2)
        self.offset = head(2)
        nn.init.constant_(self.heatmap[2].bias, -2.19)
        for h in (self.size, self.offset):
            for m in h:
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.001)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}


class CenterNet(DetectionModel):
    """CenterNet detector: backbone -> neck to stride 4 -> heatmap/size/offset heads.

    Input and output follow :class:`~segzoo.models.detection_base.DetectionModel`:
    ``model(images)`` returns one dict per image with ``boxes`` (K x 4 xyxy input pixels,
    clipped to the image), ``scores`` and ``labels`` (0-based), the top
    ``max_detections`` peaks above ``score_thresh``; ``model(images, targets)`` returns
    ``loss_heatmap`` (focal), ``loss_size`` and ``loss_offset`` (L1) and their weighted
    sum ``loss``. :meth:`forward_maps` gives the raw stride-4 maps.

    Args:
        num_classes: object classes (background is implicit).
        backbone: a timm model name with ``features_only`` support or a segzoo body.
        neck: a key of :data:`~segzoo.models.centernet_necks.NECKS`: ``"deconv"`` (official
            ``res_*``), ``"deconv_dcn"`` (``resdcn_*``),
            ``"deconv_conv"`` (``resdcn_*`` with plain convs), ``"dla_up"`` (``dla_34``),
            ``"dla_up_conv"`` (``dla_34`` with plain convs) or ``"dlav0"`` (``dlav0_34``).
        neck_channels: widths of the deconvolution stages of the ``deconv*`` necks; one
            per factor of 2 between the backbone's last stride and 4.
        head_conv: hidden channels of each head.
        max_detections: peaks kept per image (top-K over all classes).
        score_thresh: drop detections scoring below this (0 keeps all K, as the official
            COCO evaluation does).
        heatmap_weight: weight of the focal loss.
        size_weight: weight of the size L1 loss.
        offset_weight: weight of the offset L1 loss.
        max_objects: objects per image that make targets, the first ones in the target
            order (the official code's ``max_objs``: 128 on COCO); None (the default) uses all.
        backbone_weights: local timm weights file for the backbone, or a timm tag (``"imagenet"``).
        mean: per-channel mean subtracted from [0, 1] RGB input.
        std: per-channel std the input is divided by.
    """

    class_layers = ("head.heatmap.2",)
    stride = 4

    def __init__(
        self,
        num_classes: int = 80,
        backbone: str = "resnet18",
        *,
        neck: str = "deconv",
        neck_channels: Sequence[int] = (256, 256, 256),
        head_conv: int = 64,
        max_detections: int = 100,
        score_thresh: float = 0.0,
        heatmap_weight: float = 1.0,
        size_weight: float = 0.1,
        offset_weight: float = 1.0,
        max_objects: int | None = None,
        backbone_weights: str | os.PathLike | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(num_classes, mean, std)
        if neck not in NECKS:
            raise ValueError(f"neck must be one of {tuple(NECKS)}, got {neck!r}")
        if not isinstance(head_conv, int) or head_conv < 1:
            raise ValueError(f"head_conv must be a positive int, got {head_conv!r}")
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        if max_objects is not None and (isinstance(max_objects, bool) or not isinstance(max_objects, int)
                                        or max_objects < 1):
            raise ValueError(f"max_objects must be a positive int (128 as the official COCO recipe) or "
                             f"None to use every object, got {max_objects!r}")
        spec = NECKS[neck]
        self.neck_name = neck
        self.backbone = make_backbone(backbone, 32, backbone_weights, levels=spec.levels)
        chs, strides = self.backbone.channels, self.backbone.strides
        if spec.levels is not None:  # segzoo bodies return all their maps
            chs, strides = chs[-spec.levels:], strides[-spec.levels:]
        self.neck_levels = len(chs)
        try:
            self.neck = spec.build(chs, strides, tuple(neck_channels), self.stride)
        except ValueError as e:
            raise ValueError(f"backbone {backbone!r}: {e}") from None
        self.size_divisibility = self.backbone.strides[-1]
        self.head = CenterNetHead(self.neck.out_channels, num_classes, head_conv)
        self.max_detections = max_detections
        self.score_thresh = score_thresh
        self.max_objects = max_objects
        self.loss_weights = {"loss_heatmap": heatmap_weight, "loss_size": size_weight,
                             "loss_offset": offset_weight}

    def forward_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised padded images ``N x 3 x H x W`` -> raw maps at ``H/4 x W/4``.

        Returns ``heatmap`` (logits, ``N x C``), ``size`` and ``offset`` (``N x 2``).
        """
        feats = self.backbone(x)
        return self.head(self.neck(feats[len(feats) - self.neck_levels:]))

    def forward(
        self, images: torch.Tensor | Sequence[torch.Tensor], targets: Sequence[dict] | None = None
    ) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        if self.is_empty(images):
            return self.empty_result(targets)
        x, sizes = self.preprocess(images)
        maps = self.forward_maps(x)
        if targets is not None:
            return self.losses(maps, self.check_targets(targets, image_shapes(images)), sizes)
        return self.postprocess(maps, sizes)

    def losses(self, maps: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
               image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Focal heatmap loss plus L1 size and offset losses at the object centres."""
        boxes = torch.cat([t["boxes"] for t in targets])
        labels = torch.cat([t["labels"] for t in targets])
        num = [len(t["labels"]) for t in targets]
        counts = torch.tensor(num, device=boxes.device)
        image_idx = torch.repeat_interleave(torch.arange(len(targets), device=boxes.device), counts,
                                            output_size=sum(num))  # sizes known: no sync
        enc = ct.encode_targets(boxes, labels, image_idx, image_sizes, num_classes=self.num_classes,
                                out_size=tuple(maps["heatmap"].shape[-2:]), stride=self.stride,
                                max_objects=self.max_objects)
        losses = {
            "loss_heatmap": ct.focal_loss(maps["heatmap"], enc["heatmap"]),
            "loss_size": ct.regression_l1(maps["size"], enc["index"], enc["size"]),
            "loss_offset": ct.regression_l1(maps["offset"], enc["index"], enc["offset"]),
        }
        losses["loss"] = sum(self.loss_weights[k] * v for k, v in losses.items())
        return losses

    @torch.no_grad()
    def decode_padded(self, maps: dict[str, torch.Tensor], image_sizes: torch.Tensor, max_detections: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fixed-size detections of a batch (the exported outputs, see :mod:`segzoo.export`).

        Returns:
            ``boxes`` (N x K x 4, clipped to each image), ``scores`` (N x K, 0 for padding),
            ``labels`` (N x K int64, -1 for padding) and ``num_detections`` (N): the
            detections scoring at least ``score_thresh`` come first, best first.
        """
        heat = torch.sigmoid(maps["heatmap"].float())
        boxes, scores, labels = ct.decode(heat, maps["size"].float(), maps["offset"].float(),
                                          self.stride, max_detections)
        missing = max_detections - scores.shape[1]  # maps with fewer than K cells x classes
        if missing > 0:
            boxes = F.pad(boxes, (0, 0, 0, missing))
            scores = F.pad(scores, (0, missing), value=-1.0)
            labels = F.pad(labels, (0, missing))
        boxes = clip_boxes(boxes, image_sizes)  # (N, K, 4)
        keep = scores >= max(self.score_thresh, 0.0)  # (N, K); scores are sorted: a prefix per image
        boxes = boxes * keep[..., None]
        scores = torch.where(keep, scores, torch.zeros_like(scores))
        labels = torch.where(keep, labels, torch.full_like(labels, -1))
        return boxes, scores, labels, keep.sum(dim=1)

    @torch.no_grad()
    def postprocess(self, maps: dict[str, torch.Tensor], image_sizes: torch.Tensor
                    ) -> list[dict[str, torch.Tensor]]:
        """Decode the maps of a batch at once, then split into one dict per image."""
        boxes, scores, labels, num = self.decode_padded(maps, image_sizes, self.max_detections)
        return [{"boxes": b[:n], "scores": s[:n], "labels": lab[:n]}
                for b, s, lab, n in zip(boxes, scores, labels, num.tolist())]

    def exportable(self, max_detections: int = 100) -> CenterNetExport:
        """The inference path with fixed-size outputs, for ``torch.export`` and ONNX."""
        return CenterNetExport(self, max_detections)


class CenterNetExport(nn.Module):
    """``images (N x 3 x H x W) -> boxes, scores, labels, num_detections`` (padded to K)."""

    def __init__(self, model: CenterNet, max_detections: int = 100) -> None:
        super().__init__()
        self.model = model
        self.max_detections = max_detections

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, sizes = self.model.preprocess(images)
        return self.model.decode_padded(self.model.forward_maps(x), sizes, self.max_detections)


def _centernet(name: str, defaults: dict, kwargs: dict) -> CenterNet:
    return create(CenterNet, name, defaults, kwargs)


_RES = {"neck": "deconv", "neck_channels": (256, 256, 256), "head_conv": 64}
_RESDCN = {"neck": "deconv_dcn", "neck_channels": (256, 128, 64), "head_conv": 64}


# mean and std of the official pipeline, per BGR channel (datasets/dataset/{coco,pascal}.py);
# segzoo.convert.centernet reverses them into RGB for the converted models
OFFICIAL_BGR = {
    "coco": ((0.40789654, 0.44719302, 0.47026115), (0.28863828, 0.27408164, 0.27809835)),
    "pascal": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@register_model
def centernet_resnet18(**kwargs) -> CenterNet:
    """CenterNet ResNet-18, three 256-channel deconvs (official res_18)."""
    return _centernet("centernet_resnet18", {"backbone": "resnet18", **_RES}, kwargs)


@register_model
def centernet_mobilenetv2(**kwargs) -> CenterNet:
    """CenterNet on timm's mobilenetv2_100 (ImageNet: torchvision's file, from its wheel)."""
    return _centernet("centernet_mobilenetv2", {"backbone": "mobilenetv2_100", **_RES}, kwargs)


@register_model
def centernet_resnet50(**kwargs) -> CenterNet:
    """CenterNet ResNet-50, three 256-channel deconvs (official res_50)."""
    return _centernet("centernet_resnet50", {"backbone": "resnet50", **_RES}, kwargs)


@register_model
def centernet_resnet101(**kwargs) -> CenterNet:
    """CenterNet ResNet-101, three 256-channel deconvs (official res_101)."""
    return _centernet("centernet_resnet101", {"backbone": "resnet101", **_RES}, kwargs)


@register_model
def centernet_resdcn18(**kwargs) -> CenterNet:
    """CenterNet ResNet-18, DCNv2 + bilinear deconv stages 256/128/64 (official resdcn_18)."""
    return _centernet("centernet_resdcn18", {"backbone": "resnet18", **_RESDCN}, kwargs)


@register_model
def centernet_resdcn101(**kwargs) -> CenterNet:
    """CenterNet ResNet-101, DCNv2 + bilinear deconv stages 256/128/64 (official resdcn_101)."""
    return _centernet("centernet_resdcn101", {"backbone": "resnet101", **_RESDCN}, kwargs)


@register_model
def centernet_dla34(**kwargs) -> CenterNet:
    """CenterNet DLA-34, DLA-Up + IDA-Up with DCNv2 to stride 4 (official dla_34)."""
    return _centernet("centernet_dla34", {"backbone": "dla34", "neck": "dla_up", "head_conv": 256}, kwargs)


@register_model
def centernet_dla34_nodcn(**kwargs) -> CenterNet:
    """CenterNet DLA-34, original DLA-Up without deformable convs (official dlav0_34)."""
    return _centernet("centernet_dla34_nodcn", {"backbone": "dla34", "neck": "dlav0", "head_conv": 256},
                      kwargs)


# ---------------------------------------------------------------------------- published weights
# the official release is on Google Drive: a manual source; no size or checksum is published
_CENTERNET_ZOO = "https://github.com/xingyizhou/CenterNet/blob/master/readme/MODEL_ZOO.md"
# the Google Drive folder that holds every file by name (the README's per-file link for
# resdcn18 is the same as exdet_coco_dla's, so the folder is the reliable pointer)
_DRIVE_FOLDER = "https://drive.google.com/drive/folders/1S3NnppRgXea_IG4WeyquJcnOB3I6G-LX"


def _official(model: str, tag: str, file_name: str, ap: tuple[float, float, float]) -> WeightsEntry:
    mean, std = OFFICIAL_BGR["coco"]
    return WeightsEntry(
        model=model, tag=tag, source="manual", converter="centernet-official",
        dataset="COCO train2017 (80 categories)", classes=COCO_80, mean=mean[::-1], std=std[::-1],
        metrics=(("box_ap", ap[0]), ("box_ap_flip", ap[1]), ("box_ap_multiscale", ap[2])),
        metric_source="official CenterNet MODEL_ZOO.md (COCO val2017; no test augmentation / flip / multi-scale)",
        licence="MIT (CenterNet); COCO annotations CC BY 4.0",
        file_name=file_name, page=_CENTERNET_ZOO, link=_DRIVE_FOLDER, convert_kwargs=(("convention", "coco"),),
    )


register_weights(
    _official("centernet_resdcn18", "coco", "ctdet_coco_resdcn18.pth", (28.1, 30.0, 33.2)),
    _official("centernet_resdcn101", "coco", "ctdet_coco_resdcn101.pth", (34.6, 36.2, 39.3)),
    _official("centernet_dla34", "coco", "ctdet_coco_dla_2x.pth", (37.4, 39.2, 41.7)),
    _official("centernet_dla34", "coco_1x", "ctdet_coco_dla_1x.pth", (36.3, 38.2, 40.7)),
)
