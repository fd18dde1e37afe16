"""The R-CNN box head's oneDNN-packed fully connected layers (BoxHead.fold_for_inference)."""

from __future__ import annotations

import copy

import pytest
import torch

import segzoo
from segzoo.detection.roi_heads import BoxHead, BoxPredictor
from segzoo.layers.packed_linear import PackedLinears, can_pack

pytestmark = pytest.mark.skipif(not can_pack([torch.nn.Linear(2, 2)]), reason="needs oneDNN's packed matmul")


def _head(seed: int = 0) -> BoxHead:
    torch.manual_seed(seed)
    return BoxHead(64 * 7 * 7, 256).eval()


@pytest.mark.parametrize("rows", [1, 7, 300, 1001])
def test_packed_box_head_equals_eager(rows):
    head = _head()
    x = torch.randn(rows, 64, 7, 7)
    with torch.no_grad():
        ref = head(x)
        assert head.fold_for_inference()
        assert head.packed is not None and head.packed.usable(x.flatten(1))
        out = head(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 300])
def test_packed_box_predictor_equals_eager(rows):
    torch.manual_seed(0)
    predictor = BoxPredictor(256, 9).eval()
    x = torch.randn(rows, 256)
    with torch.no_grad():
        ref = predictor(x)
        assert predictor.fold_for_inference() and predictor.packed is not None
        assert all(p.usable(x) for p in predictor.packed)
        out = predictor(x)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_packed_path_steps_aside_for_gradients_edits_and_copies():
    head = _head()
    x = torch.randn(5, 64, 7, 7)
    assert head.fold_for_inference()
    # gradients on: the layers themselves run, and gradients reach them
    head(x).sum().backward()
    assert head.fc6.weight.grad is not None
    # weights changed in place after packing: the stale packed copy is not used
    with torch.no_grad():
        head.fc7.weight.mul_(2.0)
        assert not head.packed.usable(x.flatten(1))
        torch.testing.assert_close(head(x), torch.relu(head.fc7(torch.relu(head.fc6(x.flatten(1))))))
    # a deep copy packs the copied layers' weights again (oneDNN tensors cannot be copied): it computes the same
    # with its own parameters, and an edit of the copy's weights is seen by the copy only
    folded = _head()
    assert folded.fold_for_inference()
    clone = copy.deepcopy(folded)
    assert clone.packed is not None and clone.packed.params[0][0] is clone.fc6.weight
    with torch.no_grad():
        assert clone.packed.usable(x.flatten(1))
        torch.testing.assert_close(clone(x), folded(x), rtol=1e-5, atol=1e-5)
        clone.fc6.weight.zero_()
        assert not clone.packed.usable(x.flatten(1)) and folded.packed.usable(x.flatten(1))
    # autocast: the packed float32 path is not taken
    fresh = _head()
    assert fresh.fold_for_inference()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fresh.packed.usable(x.flatten(1))
    # no rows: the plain layers
    assert not fresh.packed.usable(torch.zeros(0, 64 * 7 * 7))


def test_packed_linears_refuse_what_they_cannot_pack():
    with pytest.raises(ValueError, match="float32 CPU"):
        PackedLinears([torch.nn.Linear(4, 4).double()])
    assert not BoxHead(8, 4).double().fold_for_inference()


@pytest.mark.parametrize("size", [(97, 131), (160, 224)])
def test_optimized_faster_rcnn_equals_eager_with_packed_box_head(size):
    torch.manual_seed(0)
    model = segzoo.build("fasterrcnn_resnet18_fpn", num_classes=5, box_score_thresh=0.0).eval()
    fast = segzoo.optimize(model)
    assert fast.choices.rewritten >= 2
    assert all(m.packed is not None for m in fast.modules() if isinstance(m, (BoxHead, BoxPredictor)))
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        ref = model(x)[0]
        out = fast(x)[0]
    assert len(out["boxes"]) == len(ref["boxes"]) > 0
    torch.testing.assert_close(out["scores"], ref["scores"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["boxes"], ref["boxes"], rtol=1e-4, atol=1e-3)
    assert torch.equal(out["labels"], ref["labels"])


def test_deep_copy_of_an_optimized_detector_still_predicts():
    """The copy's box head and predictor pack their own copied weights again and give the same detections."""
    torch.manual_seed(0)
    fast = segzoo.optimize(segzoo.build("fasterrcnn_resnet18_fpn", num_classes=5, box_score_thresh=0.0).eval())
    clone = copy.deepcopy(fast)
    predictor = next(m for m in clone.modules() if isinstance(m, BoxPredictor))
    assert all(p is not None and p.params[0][0] is layer.weight
               for p, layer in zip(predictor.packed, (predictor.cls_score, predictor.bbox_pred)))
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ref, out = fast(x)[0], clone(x)[0]
    assert len(out["boxes"]) == len(ref["boxes"]) > 0
    torch.testing.assert_close(out["scores"], ref["scores"], rtol=1e-4, atol=1e-5)
