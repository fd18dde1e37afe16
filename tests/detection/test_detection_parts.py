"""Mask R-CNN's building blocks against torchvision's implementations of the same thing."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchors
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from segzoo.backbones.fpn import FPN
from segzoo.detection.anchors import AnchorGenerator
from segzoo.detection.box_coder import BoxCoder
from segzoo.detection.boxes import clip_boxes, min_size_mask, pairwise_iou, rank_in_group
from segzoo.detection.matcher import BalancedSampler, Matcher
from segzoo.detection.poolers import MultiLevelRoIAlign
from segzoo.detection.postprocess import paste_masks


def _boxes(n: int, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2) * size
    return torch.cat([xy, xy + 1 + torch.rand(n, 2) * size / 2], 1)


def test_fpn_matches_torchvision():
    chans = [8, 16, 24, 32]
    tv = FeaturePyramidNetwork(chans, 16, extra_blocks=LastLevelMaxPool())
    ours = FPN(chans, (4, 8, 16, 32), 16)
    state = {k.replace(".0.", "."): v for k, v in tv.state_dict().items()}
    ours.load_state_dict(state)
    feats = [torch.randn(2, c, 40 // 2**i + 1, 36 // 2**i) for i, c in enumerate(chans)]
    ref = list(tv({str(i): f for i, f in enumerate(feats)}).values())
    got = ours(feats)
    assert ours.strides == (4, 8, 16, 32, 64) and len(got) == 5
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r)


def test_anchors_match_torchvision():
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    tv = TvAnchors(tuple((s,) for s in sizes), (ratios,) * 5)
    image_shape = (352, 320)  # padded batch; P6 is 6 x 5 -> torchvision's stride rule gives 58 / 64
    shapes = [(88, 80), (44, 40), (22, 20), (11, 10), (6, 5)]
    feats = [torch.zeros(1, 1, *s) for s in shapes]
    ref = tv(ImageList(torch.zeros(1, 3, *image_shape), [image_shape]), feats)[0]
    got = torch.cat(AnchorGenerator(sizes, ratios)(image_shape, shapes))
    torch.testing.assert_close(got, ref)


def test_box_coder_matches_torchvision():
    ref_boxes, gt = _boxes(50), _boxes(50)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        tv, ours = tv_utils.BoxCoder(weights), BoxCoder(weights)
        codes = ours.encode(gt, ref_boxes)
        torch.testing.assert_close(codes, tv.encode_single(gt, ref_boxes))
        torch.testing.assert_close(ours.decode(codes, ref_boxes), gt, atol=1e-4, rtol=1e-5)
        deltas = torch.randn(50, 4) * 3  # large dw/dh exercise the clamp
        torch.testing.assert_close(ours.decode(deltas, ref_boxes), tv.decode_single(deltas, ref_boxes))


@pytest.mark.parametrize("low_quality", [True, False])
def test_matcher_matches_torchvision_per_image(low_quality):
    preds = _boxes(300)
    gts = [_boxes(5), _boxes(2), torch.zeros(0, 4)]
    g = max(len(b) for b in gts)
    padded = torch.stack([torch.cat([b, torch.zeros(g - len(b), 4)]) for b in gts])
    valid = torch.arange(g)[None] < torch.tensor([len(b) for b in gts])[:, None]
    iou = pairwise_iou(padded, preds[None].expand(3, -1, -1))
    got = Matcher(0.7, 0.3, low_quality)(iou, valid)
    tv = tv_utils.Matcher(0.7, 0.3, low_quality)
    for i, b in enumerate(gts[:2]):
        assert torch.equal(got[i], tv(pairwise_iou(b, preds)))
    assert (got[2] == -1).all()  # no objects: everything is background


def test_sampler_bounds_and_fractions():
    torch.manual_seed(0)
    labels = torch.cat([torch.ones(30), torch.zeros(400), -torch.ones(50), torch.ones(300), torch.zeros(20)]).long()
    group = torch.cat([torch.zeros(480), torch.ones(320)]).long()
    pos, neg = BalancedSampler(64, 0.25)(labels, group, 2)
    assert not (pos & neg).any() and not ((pos | neg) & (labels < 0)).any()
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert pos[group == 0].sum() == 16 and neg[group == 0].sum() == 48  # 30 positives, capped at 16
    assert pos[group == 1].sum() == 16 and neg[group == 1].sum() == 20  # only 20 negatives exist
    pos2, _ = BalancedSampler(64, 0.25)(labels, group, 2)
    assert not torch.equal(pos, pos2)  # random choice


def test_box_utils():
    boxes = torch.tensor([[[-5.0, 2, 300, 40], [1, 1, 1.5, 3]], [[0, 0, 10, 10], [5, 5, 4, 9]]])
    sizes = torch.tensor([[30, 100], [8, 8]])
    clipped = clip_boxes(boxes, sizes)
    assert clipped[0, 0].tolist() == [0, 2, 100, 30] and clipped[1, 0].tolist() == [0, 0, 8, 8]
    assert min_size_mask(boxes, 1.0).tolist() == [[True, False], [True, False]]
    ranks = rank_in_group(torch.tensor([2, 0, 2, 2, 0, 1]), 3)
    assert ranks.tolist() == [0, 0, 1, 2, 1, 0]


def test_multilevel_roi_align_matches_torchvision():
    strides = (4, 8, 16, 32)
    feats = [torch.randn(2, 8, 96 // s, 128 // s) for s in strides]
    sides = torch.exp(torch.empty(65, 2).uniform_(math.log(8), math.log(500)))  # all four levels
    xy = torch.rand(65, 2) * 90
    boxes = list(torch.cat([xy, xy + sides], 1).split([40, 25]))
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    ref = tv({str(i): f for i, f in enumerate(feats)}, boxes, [(96, 128), (90, 120)])
    idx = torch.cat([torch.zeros(40), torch.ones(25)]).long()
    pooler = MultiLevelRoIAlign(strides, 7, 2)
    got = pooler(feats, torch.cat(boxes), idx)
    assert len(set(pooler.levels(torch.cat(boxes)).tolist())) >= 3  # several levels exercised
    torch.testing.assert_close(got, ref)


def test_paste_masks_matches_torchvision():
    torch.manual_seed(0)
    masks = torch.rand(30, 1, 28, 28)
    boxes = torch.cat([_boxes(26, 90), torch.tensor([[-20.0, -10, 30, 200], [50, 50, 50.4, 50.2],
                                                     [95, 60, 140, 70], [0, 0, 100, 80]])])
    boxes = clip_boxes(boxes, torch.tensor([80, 100]))  # detections are clipped to the image
    ref = paste_masks_in_image(masks, boxes, (80, 100))[:, 0]
    got = paste_masks(masks[:, 0], boxes, 80, 100)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert math.isclose(float(paste_masks(masks[:0, 0], boxes[:0], 5, 6).numel()), 0.0)
