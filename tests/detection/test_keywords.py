"""Detection parts take their settings by keyword, and Mask R-CNN's mask branch comes at construction."""

import pytest
import torch
from torch import nn

import segzoo
from segzoo.detection.panoptic import combine_panoptic
from segzoo.detection.roi_heads import RoIHeads
from segzoo.detection.rpn import RegionProposalNetwork, TrainTest
from segzoo.engine.optim import build_scheduler


def test_settings_are_keyword_only():
    with pytest.raises(TypeError):
        RegionProposalNetwork(256)
    with pytest.raises(TypeError):
        RoIHeads(3, 256)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(TypeError):
        build_scheduler(opt, 100, "poly", 10)
    masks = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    data = (masks, torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, 4, 4, dtype=torch.int64),
            torch.ones(1, 4, 4))
    with pytest.raises(TypeError):
        combine_panoptic(*data, 1, 1)
    assert combine_panoptic(*data, num_things=1, num_stuff=1, stuff_area_thresh=1)["segments"].shape == (1, 4, 4)


def test_rpn_counts_follow_the_mode():
    rpn = RegionProposalNetwork(in_channels=8, pre_nms_top_n=TrainTest(training=20, testing=10))
    assert rpn.pre_nms_top_n(rpn.training) == 20 and rpn.eval().pre_nms_top_n(rpn.training) == 10
    assert rpn.post_nms_top_n == TrainTest(training=2000, testing=1000)  # torchvision's defaults


def test_the_mask_branch_is_built_with_the_roi_heads():
    assert not hasattr(RoIHeads, "add_mask_branch")
    assert RoIHeads(3, in_channels=8, representation_size=16).mask_head is None
    heads = RoIHeads(3, in_channels=8, representation_size=16, mask_layers=(8, 8))
    assert [c.out_channels for c in heads.mask_head.convs] == [8, 8] and heads.mask_roi_pool.output_size == 14
    small = dict(backbone="resnet18", fpn_channels=16, representation_size=16)
    with torch.device("meta"):
        mask = segzoo.build("maskrcnn_resnet18_fpn", num_classes=3, mask_layers=(8,), **small)
        box = segzoo.build("fasterrcnn_resnet18_fpn", num_classes=3, **small)
    assert mask.has_masks and mask.mask_layers == (8,) and mask.roi_heads.mask_head.mask_logits.out_channels == 3
    assert not box.has_masks and box.mask_layers is None
