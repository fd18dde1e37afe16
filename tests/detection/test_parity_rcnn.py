"""Faster / Mask R-CNN training path against torchvision's: mask targets, losses, gradients and
the trainable backbone stages of converted detectors.

Both models hold the same random weights (torchvision's model converted with
``segzoo.convert.from_torchvision``) and sample every anchor and every proposal
(``batch_size_per_image`` above their number, ``positive_fraction=1``), so the losses are
the same sums over the same elements and may differ only in float rounding. torchvision's
internal resize is switched off (segzoo models do not resize), and its labels are 1-based.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18
from torchvision.models.detection import FasterRCNN as TvFasterRCNN
from torchvision.models.detection import MaskRCNN as TvMaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import project_masks_on_boxes
from torchvision.ops import FeaturePyramidNetwork, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

import segzoo.convert
from segzoo.detection.roi_heads import mask_targets

M = 28  # Mask R-CNN's mask side
ALL = 10**6  # more than every anchor / proposal: the samplers take them all
FPN, REPR, MASK = 32, 64, (32, 32)  # a small FPN, box head and mask head (fast on 2 CPU cores)
CLASSES = 3


# ---------------------------------------------------------------------------- mask targets
def _canvas(masks: list[torch.Tensor], hp: int, wp: int, mode: str = "replicate") -> torch.Tensor:
    """Each image's ``(K, H, W)`` masks padded to the ``hp x wp`` canvas, stacked."""
    return torch.cat([F.pad(m[:, None], (0, wp - m.shape[-1], 0, hp - m.shape[-2]), mode=mode)[:, 0]
                      for m in masks])


def _border_boxes(h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """Clipped boxes whose RoIAlign samples cover every case near the bottom/right border.

    Starts from two pixels inside the border to the border itself (1/64 px steps, the border
    exactly, and starts just inside it), heights/widths under one pixel (one sample per output
    row, some of them below the image), around one pixel, around the 28-cell bin size (one
    to three samples per bin) and large; plus random boxes anywhere.
    """
    starts = torch.cat([torch.linspace(2, 0, 129), torch.tensor([1e-3, 1 / 56, 0.5 / 28])])
    extents = torch.tensor([1e-3, 0.1, 0.5, 0.98, 1.0, 1.02, 1.7, 2.5, 27.9, 28.0, 29.3, 57.0, 90.0])
    offset, extent = torch.meshgrid(starts, extents, indexing="ij")
    offset, extent = offset.flatten(), extent.flatten()  # (S*E,)
    n = len(offset)
    other_start = torch.rand(n, generator=g) * 0.6 * min(h, w)
    other_extent = torch.rand(n, generator=g) * 0.4 * min(h, w) + 0.5
    # y at the bottom border (x anywhere), x at the right border, and both at once
    y1 = (h - offset).clamp(min=0)
    x1 = (w - offset).clamp(min=0)
    bottom = torch.stack([other_start, y1, other_start + other_extent, y1 + extent], 1)
    right = torch.stack([x1, other_start, x1 + extent, other_start + other_extent], 1)
    corner = torch.stack([x1, y1, x1 + extent.flip(0), y1 + extent], 1)
    xy = torch.rand(300, 2, generator=g) * torch.tensor([w, h])
    wh = torch.rand(300, 2, generator=g) ** 3 * torch.tensor([w, h])  # many small ones
    anywhere = torch.cat([xy, xy + wh], 1)
    boxes = torch.cat([bottom, right, corner, anywhere])
    limit = torch.tensor([w, h, w, h], dtype=boxes.dtype)
    boxes = torch.minimum(boxes.clamp(min=0), limit)  # clipped, as segzoo's proposals and targets are
    return boxes[((boxes[:, 2:] - boxes[:, :2]) >= 1e-3).all(1)]  # what the model lets through


def test_mask_targets_equal_torchvision_at_every_border_sample_point():
    g = torch.Generator().manual_seed(0)
    sizes = [(250, 300), (37, 45), (61, 29)]  # canvas 256 x 320: every image is padded
    hp, wp = 256, 320
    masks = [(torch.rand(3, h, w, generator=g) > 0.5).float() for h, w in sizes]
    masks[1][1] = torch.rand(sizes[1], generator=g)  # soft values too: the rule is the sampling's
    first = torch.tensor([0, 3, 6])  # row of each image's first mask on the canvas
    ours, ref, zero_padded, not_cut = [], [], [], []
    for i, ((h, w), m) in enumerate(zip(sizes, masks)):
        boxes = _border_boxes(h, w, g)
        idx = torch.randint(0, 3, (len(boxes),), generator=g)
        hw = torch.tensor([[h, w]]).expand(len(boxes), 2)
        ref.append(project_masks_on_boxes(m, boxes, idx, M))  # torchvision: each image's own masks
        ours.append(mask_targets(_canvas(masks, hp, wp), boxes, first[i] + idx, hw, M))
        rois = torch.cat([(first[i] + idx)[:, None].float(), boxes], 1)
        zero_padded.append(roi_align(_canvas(masks, hp, wp, "constant")[:, None], rois, (M, M), 1.0)[:, 0])
        not_cut.append(roi_align(_canvas(masks, hp, wp)[:, None], rois, (M, M), 1.0)[:, 0])
    ours, ref = torch.cat(ours), torch.cat(ref)
    assert len(ref) > 5000
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    # both halves of the rule matter: zero padding (the old bug) and edge padding alone differ
    assert (torch.cat(zero_padded) - ref).abs().max() > 0.3
    assert (torch.cat(not_cut) - ref).abs().max() > 0.3


# ---------------------------------------------------------------------------- the model pair
def _tv_backbone():
    """torchvision's detector backbone with its pretrained recipe (FrozenBatchNorm2d,
    ``trainable_layers=3``), a ResNet-18 body and a small FPN."""
    backbone = _resnet_fpn_extractor(resnet18(norm_layer=FrozenBatchNorm2d), 3)
    backbone.fpn = FeaturePyramidNetwork([64, 128, 256, 512], FPN, extra_blocks=LastLevelMaxPool())
    backbone.out_channels = FPN
    return backbone


SAMPLE_ALL = dict(rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
                  rpn_batch_size_per_image=ALL, rpn_positive_fraction=1.0,
                  box_batch_size_per_image=ALL, box_positive_fraction=1.0)


def _pair(masks: bool):
    torch.manual_seed(0)
    heads = dict(box_head=TwoMLPHead(FPN * 7 * 7, REPR), box_predictor=FastRCNNPredictor(REPR, CLASSES + 1))
    if masks:
        heads.update(mask_head=MaskRCNNHeads(FPN, list(MASK), 1),
                     mask_predictor=MaskRCNNPredictor(MASK[-1], MASK[-1], CLASSES + 1))
        tv = TvMaskRCNN(_tv_backbone(), num_classes=None, **heads, **SAMPLE_ALL)
    else:
        tv = TvFasterRCNN(_tv_backbone(), num_classes=None, **heads, **SAMPLE_ALL)
    tv.transform.resize = lambda image, target=None: (image, target)  # segzoo does not resize
    name = "maskrcnn_resnet18_fpn" if masks else "fasterrcnn_resnet18_fpn"
    extra = {"mask_layers": MASK} if masks else {}
    ours = segzoo.convert.from_torchvision(tv.state_dict(), name, fpn_channels=FPN, representation_size=REPR,
                                           **extra, **SAMPLE_ALL)
    return tv.train(), ours.train()


def _target(h: int, w: int, boxes: list[list[float]], labels: list[int]) -> dict:
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):  # a blob inside each box, touching its edges
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        cy, cx, ry, rx = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2, (x2 - x1) / 2
        masks[k] = (((yy - cy) / ry) ** 4 + ((xx - cx) / rx) ** 4 <= 1) & (yy < y2) & (xx < x2)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "masks": masks}


def _batch():
    """Sizes that are not multiples of 32, objects whose masks touch the bottom/right border,
    an image without objects; all three sizes differ (a list input)."""
    g = torch.Generator().manual_seed(3)
    sizes = [(250, 300), (203, 261), (150, 190)]
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    targets = [
        _target(250, 300, [[12, 20, 130, 140], [140, 110, 300, 250], [205, 0, 300, 70], [0, 180, 60, 250]],
                [0, 2, 1, 2]),
        _target(203, 261, [[30, 40, 261, 203], [100, 150, 180, 203]], [1, 0]),
        _target(150, 190, [], []),
    ]
    return images, targets


def _torchvision_targets(targets: list[dict]) -> list[dict]:
    return [{**t, "labels": t["labels"] + 1} for t in targets]  # torchvision: 0 is background


# (torchvision name, segzoo name, rows of torchvision's tensor that segzoo keeps)
GRADS = [
    ("backbone.body.layer2.0.conv1.weight", "backbone.body.layer2.0.conv1.weight", None),
    ("backbone.body.layer4.1.conv2.weight", "backbone.body.layer4.1.conv2.weight", None),
    ("backbone.fpn.inner_blocks.0.0.weight", "fpn.inner_blocks.0.weight", None),
    ("backbone.fpn.layer_blocks.3.0.weight", "fpn.layer_blocks.3.weight", None),
    ("rpn.head.conv.0.0.weight", "rpn.head.conv.weight", None),
    ("rpn.head.cls_logits.weight", "rpn.head.cls_logits.weight", None),
    ("rpn.head.bbox_pred.weight", "rpn.head.bbox_pred.weight", None),
    ("roi_heads.box_head.fc6.weight", "roi_heads.box_head.fc6.weight", None),
    ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.weight", None),
    ("roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.weight", slice(4, None)),
]
MASK_GRADS = [
    ("roi_heads.mask_head.0.0.weight", "roi_heads.mask_head.convs.0.weight", None),
    ("roi_heads.mask_predictor.conv5_mask.weight", "roi_heads.mask_head.deconv.weight", None),
    ("roi_heads.mask_predictor.mask_fcn_logits.weight", "roi_heads.mask_head.mask_logits.weight", slice(1, None)),
]


def _check_parity(tv, ours, masks: bool) -> None:
    images, targets = _batch()
    ref = tv(images, _torchvision_targets(targets))
    got = ours(images, targets)
    assert set(got) == {*ref, "loss"}
    for k, v in ref.items():
        assert v > 0, k  # every loss is exercised
        torch.testing.assert_close(got[k], v, rtol=2e-6, atol=1e-8, msg=lambda m, k=k: f"{k}: {m}")
    sum(ref.values()).backward()
    got["loss"].backward()
    tv_params, our_params = dict(tv.named_parameters()), dict(ours.named_parameters())
    for tv_name, our_name, rows in GRADS + (MASK_GRADS if masks else []):
        expected = tv_params[tv_name].grad
        expected = expected if rows is None else expected[rows]
        actual = our_params[our_name].grad
        rel = float((actual - expected).norm() / expected.norm())
        assert rel < 1e-5, f"{our_name}: gradient relative difference {rel:.2e}"
    # torchvision's recipe: the stem and layer1 do not train, in either model
    for name in ("backbone.body.conv1.weight", "backbone.body.layer1.0.conv1.weight"):
        assert tv_params[name].grad is None and our_params[name].grad is None


def test_maskrcnn_losses_and_gradients_equal_torchvision():
    _check_parity(*_pair(masks=True), masks=True)


def test_fasterrcnn_losses_and_gradients_equal_torchvision():
    _check_parity(*_pair(masks=False), masks=False)


# ---------------------------------------------------------------------------- trainable stages
@pytest.mark.parametrize("masks", [True, False])
def test_converted_detectors_train_what_torchvision_trains(masks):
    tv = (TvMaskRCNN if masks else TvFasterRCNN)(_resnet_fpn_extractor(resnet18(norm_layer=FrozenBatchNorm2d), 3),
                                                 num_classes=5)
    name = "maskrcnn_resnet18_fpn" if masks else "fasterrcnn_resnet18_fpn"
    ours = segzoo.convert.from_torchvision(tv.state_dict(), name)
    trains = {k for k, p in tv.backbone.body.named_parameters() if p.requires_grad}
    assert trains and not any(k.startswith(("conv1", "layer1")) for k in trains)
    assert {k for k, p in ours.backbone.body.named_parameters() if p.requires_grad} == trains
    assert ours.spec.kwargs["trainable_backbone_layers"] == 3  # kept by segzoo.save / segzoo.load
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.backbone.modules())  # frozen BN
    # overridable: every stage, or torchvision's trainable_backbone_layers=5
    everything = segzoo.convert.from_torchvision(tv.state_dict(), name, trainable_backbone_layers=5)
    assert all(p.requires_grad for p in everything.backbone.parameters())
