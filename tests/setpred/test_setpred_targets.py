"""Set targets from semantic maps, and crowd segments left out."""

from __future__ import annotations

import pytest
import torch

from segzoo.setpred import drop_crowd, semantic_to_set_targets


def test_semantic_maps_become_one_mask_per_present_class():
    labels = torch.tensor([[[0, 0, 2], [255, 2, 2]], [[1, 1, 1], [1, 255, 255]]])
    out = semantic_to_set_targets(labels, num_classes=3)
    assert out[0]["labels"].tolist() == [0, 2] and out[1]["labels"].tolist() == [1]
    assert out[0]["masks"].tolist() == [[[True, True, False], [False, False, False]],
                                        [[False, False, True], [False, True, True]]]
    assert not out[1]["masks"][0, 1, 1:].any()  # ignored pixels are in no mask


def test_semantic_labels_out_of_range_are_refused():
    with pytest.raises(ValueError, match="num_classes=3"):
        semantic_to_set_targets(torch.tensor([[[0, 3]]]), num_classes=3)


def test_crowd_segments_are_dropped():
    t = {"labels": torch.tensor([0, 1, 2]), "masks": torch.rand(3, 4, 4) > 0.5,
         "iscrowd": torch.tensor([0, 1, 0])}
    out = drop_crowd([t, {"labels": t["labels"], "masks": t["masks"]}])
    assert out[0]["labels"].tolist() == [0, 2] and torch.equal(out[0]["masks"], t["masks"][[0, 2]])
    assert out[1]["labels"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="iscrowd"):
        drop_crowd([{**t, "iscrowd": torch.tensor([1])}])
