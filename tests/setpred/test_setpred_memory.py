"""The merges' memory bound (issue 28, item 6): no full-resolution ``Q x H x W`` float masks before the top-k.

The merges resize the mask logits a chunk of queries at a time (``segzoo.setpred.merge.CHUNK_ELEMENTS``)
and the instance merge resizes only the kept pairs' masks. Checked two ways: the outputs equal the
resize-everything-first path they replace (written here as the reference), with several chunks; and
a dispatch mode that records every tensor an aten op makes sees none as large as ``Q x H x W`` floats
in a model's inference path with 200 queries at 1024 px.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import segzoo
from segzoo.setpred import merge
from segzoo.setpred.merge import instance_merge, mask_boxes, merge_all, panoptic_merge, semantic_merge


class LargestTensor(TorchDispatchMode):
    """Records the largest storage (bytes) a tensor any aten op returns holds (views: their base's)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > self.bytes:
                self.bytes, self.op = t.untyped_storage().nbytes(), str(func)
        return out


def _full(mask_logits, padded, crop):
    up = F.interpolate(mask_logits.float(), size=tuple(padded), mode="bilinear", align_corners=False)
    return up[..., : crop[0], : crop[1]]


def _old_semantic(cls, msk):
    return torch.einsum("bqc,bqhw->bchw", cls.float().softmax(-1)[..., :-1], msk.sigmoid())


def _old_instance(cls, logits, topk, thing_classes):
    b, q, c1 = cls.shape
    c = c1 - 1
    cls_scores, idx = cls.float().softmax(-1)[..., :-1].flatten(1).topk(topk, dim=1)
    labels, query = idx % c, idx // c
    logits = logits.gather(1, query[..., None, None].expand(b, topk, *logits.shape[-2:]))
    binary = logits > 0
    masks = logits.sigmoid()
    scores = cls_scores * (masks * binary).flatten(2).sum(-1) / (binary.flatten(2).sum(-1) + 1e-6)
    order = scores.argsort(dim=1, descending=True, stable=True)
    scores, labels = scores.gather(1, order), labels.gather(1, order)
    masks = masks.gather(1, order[..., None, None].expand_as(masks))
    keep = thing_classes[labels]
    return [{"scores": scores[i][keep[i]], "labels": labels[i][keep[i]], "masks": masks[i][keep[i]],
             "boxes": mask_boxes(masks[i][keep[i]] > 0.5)} for i in range(b)]


def _old_panoptic_segments(cls, logits, score_thresh):
    """The winners and their own-mask pixels of the old path (the rest of the merge is per query)."""
    scores, labels = cls.float().softmax(-1).max(-1)
    keep = (labels != cls.shape[-1] - 1) & (scores > score_thresh)
    probs = logits.sigmoid()
    winner = torch.where(keep[..., None, None], scores[..., None, None] * probs, -1.0).argmax(1)
    own = probs.gather(1, winner[:, None])[:, 0] >= 0.5
    return winner, own, (probs >= 0.5).flatten(2).sum(-1)


def _inputs(seed=0, b=2, q=24, c=4, h=14, w=18):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(b, q, c + 1, generator=g) * 3
    msk = torch.randn(b, q, h, w, generator=g) * 4 - 1
    return cls, msk


def test_chunked_merges_equal_the_resize_everything_first_path(monkeypatch):
    padded, crop = (56, 72), (50, 70)
    monkeypatch.setattr(merge, "CHUNK_ELEMENTS", 5 * 50 * 70, raising=False)  # 5 queries a chunk, 5 chunks
    thing = torch.tensor([True, True, False, False])
    for seed in range(3):
        cls, msk = _inputs(seed)
        full = _full(msk, padded, crop)
        torch.testing.assert_close(semantic_merge(cls, msk, size=padded, crop=crop), _old_semantic(cls, full),
                                   rtol=1e-5, atol=1e-5)  # the sum over queries in another order
        got = instance_merge(cls, msk, topk=30, thing_classes=thing, size=padded, crop=crop)
        for g, r in zip(got, _old_instance(cls, full, 30, thing)):
            assert torch.equal(g["labels"], r["labels"]) and g["masks"].shape == r["masks"].shape
            for key in ("scores", "masks", "boxes"):
                torch.testing.assert_close(g[key], r[key], rtol=0, atol=1e-6)
        pan = panoptic_merge(cls, msk, thing, score_thresh=0.5, overlap_thresh=0.3, size=padded, crop=crop)
        winner, own, _ = _old_panoptic_segments(cls, full, 0.5)
        monkeypatch.setattr(merge, "CHUNK_ELEMENTS", 1 << 24, raising=False)  # one chunk: the old arithmetic
        ref = panoptic_merge(cls, full, thing, score_thresh=0.5, overlap_thresh=0.3)
        monkeypatch.setattr(merge, "CHUNK_ELEMENTS", 5 * 50 * 70, raising=False)
        for i in range(2):
            assert torch.equal(pan[i]["segments"], ref[i]["segments"])
            assert pan[i]["segments_info"] == ref[i]["segments_info"]
            assert pan[i]["segments_info"], "no segment: the case tests nothing"
            assert torch.equal(pan[i]["segments"] > 0, (pan[i]["segments"] > 0) & own[i])
        sem, inst, pan_all = merge_all(cls, msk, thing, topk=30, instance_things=True, score_thresh=0.5,
                                       overlap_thresh=0.3, size=padded, crop=crop)  # one pass: the same
        assert torch.equal(sem, semantic_merge(cls, msk, size=padded, crop=crop))
        for a, r in zip(inst, got):
            assert all(torch.equal(a[key], r[key]) for key in r)
        for a, r in zip(pan_all, pan):
            assert torch.equal(a["segments"], r["segments"]) and a["segments_info"] == r["segments_info"]


def test_merges_do_not_change_their_inputs():
    cls, msk = _inputs(1)
    before = msk.clone()
    semantic_merge(cls, msk)
    instance_merge(cls, msk, topk=5)
    panoptic_merge(cls, msk, torch.tensor([True, True, False, False]), score_thresh=0.5)
    assert torch.equal(msk, before)


def _largest_in_postprocess(q, size, padded, mask_size):
    torch.manual_seed(0)
    model = segzoo.build("mask2former_resnet18_small", num_classes=3, num_stuff=1, num_queries=q,
                         score_thresh=0.0, overlap_thresh=0.0).eval()
    cls = torch.randn(1, q, 4) * 3
    msk = torch.randn(1, q, mask_size, mask_size) * 4
    with torch.no_grad(), LargestTensor() as seen:
        out = model.postprocess(cls, msk, padded, [size])[0]
    assert len(out["labels"]) <= (model.topk or q) and out["masks"].shape[-2:] == size
    assert out["segments_info"] and out["sem_seg"].shape == (3, *size)
    return model, seen


def test_inference_holds_no_query_by_pixel_floats(monkeypatch):
    """As below at 128 px, with chunks scaled down alike (16 queries)."""
    monkeypatch.setattr(merge, "CHUNK_ELEMENTS", 16 * 128 * 128, raising=False)
    model, seen = _largest_in_postprocess(200, (120, 126), (128, 128), 32)
    assert seen.bytes < 200 * 120 * 126 * 4, f"{seen.op} made {seen.bytes} bytes, Q x H x W floats"


@pytest.mark.slow
def test_inference_of_200_queries_at_1024_px_holds_no_query_by_pixel_floats():
    """The postprocess of a model with 200 queries on a 1000 x 1010 image (padded to 1024): the largest
    tensor any op makes is under ``Q x H x W`` floats (the resize-first path made exactly that, and
    several of them). The logits are random: what is measured is the merges' memory, not the model's."""
    q, (h, w) = 200, (1000, 1010)
    model, seen = _largest_in_postprocess(q, (h, w), (1024, 1024), 256)
    assert model.topk == 100
    assert seen.bytes < q * h * w * 4, f"{seen.op} made {seen.bytes / 2**20:.0f} MiB, Q x H x W floats"
    assert seen.bytes <= 100 * 1024 * 1024 * 4  # the largest: the kept instances' masks, resized to pad


def test_instance_merge_with_no_kept_pair_gives_empty_rows():
    """No top-k pair of a thing class: nothing to resize (interpolate refuses an empty tensor)."""
    cls, msk = _inputs(2, q=4, c=3)
    cls[..., 0] = -20.0  # the only thing class never wins a top-k place
    thing = torch.tensor([True, False, False])
    for out in (instance_merge(cls, msk, topk=3, thing_classes=thing, size=(32, 40), crop=(30, 37)),
                merge_all(cls, msk, thing, topk=3, instance_things=True, size=(32, 40), crop=(30, 37))[1]):
        assert [tuple(o["masks"].shape) for o in out] == [(0, 30, 37)] * 2
        assert all(o["boxes"].shape == (0, 4) and o["labels"].numel() == 0 for o in out)
