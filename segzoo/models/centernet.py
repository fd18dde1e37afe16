"""CenterNet (Zhou, Wang and Krähenbühl, "Objects as Points", 2019) on timm backbones.

Each object is the peak of its class heatmap at output stride 4; the size and the
sub-cell offset of its box are regressed at that peak. No anchors and no NMS: a 3x3
max-pool keeps the peaks. Targets, losses and decoding live in
:mod:`segzoo.detection.centernet`; the necks in :mod:`segzoo.models.centernet_necks`, the heads in
:mod:`segzoo.models.centernet_head`.

Registered variants and the official architectures they reproduce (``--arch``):
``centernet_resnet{18,50,101}`` (``res_*``), ``centernet_resdcn{18,101}`` (``resdcn_*``),
``centernet_dla34`` (``dla_34``) and ``centernet_dla34_nodcn`` (``dlav0_34``); the key map of
the official checkpoints (:func:`from_centernet_official`) is at the end, beside the published weights.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones import make_backbone
from segzoo.detection import centernet as ct
from segzoo.detection.boxes import clip_boxes
from segzoo.hub.published import COCO_80, WeightsEntry, register_converter, register_weights
from segzoo.layers.tracing import is_tracing
from segzoo.models.centernet_head import CenterNetHead
from segzoo.models.centernet_necks import NECKS
from segzoo.models.converters import load_converted, resnet_depth
from segzoo.models.detection_base import DetectionModel, image_shapes
from segzoo.registry import build, create, entry_class, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD

# Necks fed channels_last maps at eager CPU inference (gradients off, not traced): the plain deconvolution
# stages' oneDNN transposed convolutions write NHWC and PyTorch transposes the 256 x 128 x 128 result back for a
# contiguous input (13 ms of CenterNet-R18's 512 px run on one thread), and the head's 3x3 convolutions reorder
# a contiguous input too; the same numbers (float rounding), the model 0.83-0.94x of its time (two runs,
# docs/performance-optimize.md). The maps come out channels_last then. Only the measured necks: the DCN necks
# are unchanged (resdcn18: 1.00x).
CHANNELS_LAST_NECKS = frozenset({"deconv"})


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
        feats = feats[len(feats) - self.neck_levels:]
        if (self.neck_name in CHANNELS_LAST_NECKS and x.device.type == "cpu" and not torch.is_grad_enabled()
                and not is_tracing()):
            feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        return self.head(self.neck(feats))

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
# from_centernet_official (below) reverses them into RGB for the converted models
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


# ---------------------------------------------------------------------------- key maps
# Official CenterNet (xingyizhou/CenterNet) checkpoints -> segzoo CenterNet models.
#
# Supported ``--arch`` values of the official code and their segzoo names:
# ``res_18/50/101`` -> ``centernet_resnet18/50/101``; ``resdcn_18/101`` ->
# ``centernet_resdcn18/101``; ``dla_34`` -> ``centernet_dla34``; ``dlav0_34`` ->
# ``centernet_dla34_nodcn``. Other ResNet depths (``res_34``, ``resdcn_50``...) convert
# into the entry of the same family with ``backbone="resnetNN"``.
#
# Key mapping (after removing a ``module.`` prefix):
#
# * ResNet body ``conv1``, ``bn1``, ``layerN.*`` -> ``backbone.body.*`` (timm's ResNet names
#   are torchvision's, which the official code uses);
# * ``base.*`` (DLA-34) -> ``backbone.body.*``: timm's ``dla34`` has the official layout
#   except that it leaves out two unused layers, which are dropped here with the ImageNet
#   classifier: ``base.fc.*``, ``base.level3.project.*`` and ``base.level4.project.*`` (the
#   official ``Tree`` builds a ``project`` in its two-level trees but never uses it);
# * ``deconv_layers.N.*`` -> ``neck.layers.N.*`` (DCN keys ``weight``, ``bias``,
#   ``conv_offset_mask.*`` are kept);
# * ``dla_up.*`` and ``ida_up.*`` -> ``neck.dla_up.*`` and ``neck.ida_up.*``, with a
#   DeformConv's ``actf.0`` (its BatchNorm) renamed ``bn``;
# * heads ``hm``, ``wh``, ``reg`` -> ``head.heatmap``, ``head.size``, ``head.offset``.
#
# Input convention: the official pipeline feeds **BGR** images as ``(img / 255 - mean) /
# std`` with ``mean``/``std`` listed per BGR channel (COCO: its own statistics; Pascal:
# ImageNet's numbers, applied to B, G, R in that order). segzoo models take RGB in [0, 1],
# so the converter reverses the input channels of the first convolution and gives the
# model the official ``mean``/``std`` reversed into RGB order (recorded in ``model.spec``).
# The converted model on an RGB image gives the official network's outputs on its BGR
# input.

# official family -> segzoo CenterNet neck (a key of segzoo.models.centernet_necks.NECKS)
FAMILY_NECK = {"res": "deconv", "resdcn": "deconv_dcn", "dla": "dla_up", "dlav0": "dlav0"}
# a registered model of each family, for messages
_SUGGEST = {"res": "centernet_resnet18", "resdcn": "centernet_resdcn18", "dla": "centernet_dla34",
            "dlav0": "centernet_dla34_nodcn"}
_UNUSED = re.compile(r"^base\.(fc\.|level[34]\.project\.)")  # DLA-34: unused in two-level trees
_HEADS = {"hm.": "head.heatmap.", "wh.": "head.size.", "reg.": "head.offset."}


def official_arch(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """The official family (``res``, ``resdcn``, ``dla``, ``dlav0``) and timm backbone."""
    if "hm.2.weight" not in state:
        hint = " (hourglass checkpoints are not supported)" if any(k.startswith("pre.") for k in state) else ""
        raise KeyError("no hm.2.weight: this is not an official CenterNet ctdet state dict with "
                       f"head_conv > 0{hint}")
    if "deconv_layers.0.conv_offset_mask.weight" in state:
        family = "resdcn"
    elif "deconv_layers.0.weight" in state:
        family = "res"
    elif "dla_up.ida_0.proj_1.conv.weight" in state:
        family = "dla"
    elif "dla_up.ida_0.proj_1.0.weight" in state:
        family = "dlav0"
    else:
        raise KeyError("unrecognised official CenterNet architecture: expected deconv_layers.* "
                       "(res_*, resdcn_*) or dla_up.* (dla_34, dlav0_34) keys")
    if family in ("dla", "dlav0"):
        if state["base.level5.root.conv.weight"].shape[0] != 512:
            raise ValueError("only DLA-34 bodies are supported (level5 with 512 channels)")
        return family, "dla34"
    depth = resnet_depth(state)
    if depth is None:
        raise ValueError("unrecognised ResNet body (its layer3 block count is not that of ResNet-18/34/50/101/152)")
    return family, f"resnet{depth}"


def _map_key(k: str) -> str | None:
    if _UNUSED.match(k):
        return None
    if k.startswith("base."):
        return "backbone.body." + k.removeprefix("base.")
    if k.startswith(("conv1.", "bn1.", "layer")):
        return "backbone.body." + k
    if k.startswith("deconv_layers."):
        return "neck.layers." + k.removeprefix("deconv_layers.")
    if k.startswith(("dla_up.", "ida_up.")):
        return "neck." + k.replace(".actf.0.", ".bn.")
    for src, dst in _HEADS.items():
        if k.startswith(src):
            return dst + k.removeprefix(src)
    if k.startswith("fc."):  # an ImageNet classifier left in a ResNet checkpoint
        return None
    raise KeyError(f"unexpected key {k!r} in an official CenterNet state dict")


def from_centernet_official(
    state_dict: dict, name: str, convention: str | None = None, **build_kwargs: Any
) -> nn.Module:
    """Build segzoo CenterNet ``name`` holding an official CenterNet checkpoint's weights.

    Args:
        state_dict: the official checkpoint (``{"epoch", "state_dict", ...}``) or its
            ``state_dict``, with or without a ``module.`` prefix.
        name: the segzoo model, e.g. ``"centernet_dla34"`` for ``--arch dla_34``.
        convention: ``"coco"`` or ``"pascal"``: which official mean/std the weights were
            trained with; by default Pascal for 20 classes and COCO otherwise.
        **build_kwargs: extra builder arguments; ``num_classes``, ``head_conv``, the neck
            widths, ``mean`` and ``std`` are read from the checkpoint and the convention.

    Returns:
        The model in eval mode, taking RGB [0, 1] images, with ``model.spec`` set.
    """
    if not issubclass(entry_class(name), CenterNet):  # a clear KeyError for unknown names
        raise ValueError(f"{name!r} is not a CenterNet model; choose one of the centernet_* models "
                         "(segzoo.list_models('centernet_*'))")
    if isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    family, backbone = official_arch(state)
    with torch.device("meta"):  # what `name` builds by default: neck, backbone, widths (no memory)
        ref = build(name, **build_kwargs)
    if ref.neck_name != FAMILY_NECK[family]:
        raise ValueError(f"the checkpoint is an official {family}_* model (neck {FAMILY_NECK[family]!r}) but "
                         f"{name!r} has neck {ref.neck_name!r}; convert it with name {_SUGGEST[family]!r} "
                         "(or its deeper variants)")
    num_classes = int(state["hm.2.weight"].shape[0])
    if convention is None:
        convention = "pascal" if num_classes == 20 else "coco"
    if convention not in OFFICIAL_BGR:
        raise ValueError(f"convention must be 'coco' or 'pascal', got {convention!r}")
    mean_bgr, std_bgr = OFFICIAL_BGR[convention]
    kwargs: dict[str, Any] = {"mean": list(mean_bgr[::-1]), "std": list(std_bgr[::-1])}
    if backbone != ref.backbone.name:
        kwargs["backbone"] = backbone
    head_conv = int(state["hm.0.weight"].shape[0])
    if head_conv != ref.head.heatmap[0].out_channels:
        kwargs["head_conv"] = head_conv
    if family in ("res", "resdcn"):
        step = 3 if family == "res" else 6
        widths = tuple(int(state[f"deconv_layers.{step * i}.weight"].shape[1 if family == "res" else 0])
                       for i in range(3))
        if widths != ref.neck.widths:
            kwargs["neck_channels"] = list(widths)
    kwargs.update(build_kwargs)
    model = build(name, num_classes=num_classes, **kwargs)

    mapped = {}
    for k, v in state.items():
        new = _map_key(k)
        if new is not None:
            mapped[new] = v
    first = "backbone.body.conv1.weight" if family.startswith("res") else "backbone.body.base_layer.0.weight"
    mapped[first] = mapped[first].flip(1)  # official BGR input -> segzoo RGB input
    return load_converted(model, mapped)  # checkpoints from before PyTorch 0.4.1 lack the BN counters


register_converter("centernet-official", from_centernet_official)


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
