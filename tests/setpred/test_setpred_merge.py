"""The batched merges against the paper's per-segment rules written as a plain loop, on inputs where
Hugging Face's post-processing differs (uncovered pixels, several queries of one stuff class), and
their outputs in segzoo's panoptic metric."""

from __future__ import annotations

import torch

from segzoo.metrics.panoptic import PanopticQuality
from segzoo.setpred import instance_merge, panoptic_merge, semantic_merge
from segzoo.setpred.merge import mask_boxes


def _paper_panoptic(cls, msk, thing, score_thresh, overlap_thresh):
    """Mask2Former's panoptic_inference, one image, query by query; also how many queries were fused."""
    c = cls.shape[-1] - 1
    scores, labels = cls.softmax(-1).max(-1)
    probs = msk.sigmoid()
    keep = (labels != c) & (scores > score_thresh)
    kept = keep.nonzero().flatten().tolist()
    seg = torch.zeros(msk.shape[-2:], dtype=torch.int32)
    info, stuff_ids, next_id, fused = [], {}, 0, 0
    if not kept:
        return seg, info, fused
    winner = (scores[kept, None, None] * probs[kept]).argmax(0)
    for j, qi in enumerate(kept):
        lab = int(labels[qi])
        won = int((winner == j).sum())
        area = int((probs[qi] >= 0.5).sum())
        mask = (winner == j) & (probs[qi] >= 0.5)
        if won == 0 or area == 0 or int(mask.sum()) == 0 or won / area < overlap_thresh:
            continue
        if not thing[lab] and lab in stuff_ids:
            seg[mask] = stuff_ids[lab]
            fused += 1
            continue
        next_id += 1
        if not thing[lab]:
            stuff_ids[lab] = next_id
        seg[mask] = next_id
        info.append({"id": next_id, "category": lab, "is_thing": bool(thing[lab]), "score": float(scores[qi])})
    return seg, info, fused


def _logits(b, q, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    blobs = torch.randn(b, q, h // 4, w // 4, generator=g) * 4 - 3  # sparse blobs, some uncovered pixels
    msk = torch.nn.functional.interpolate(blobs, size=(h, w), mode="bilinear", align_corners=False)
    cls = torch.randn(b, q, c + 1, generator=g)
    best = torch.randint(0, c, (b, q), generator=g)
    cls.scatter_(2, best[..., None], 4.0 + 2 * torch.rand(b, q, 1, generator=g))
    return cls, msk


def test_panoptic_merge_equals_the_papers_rules():
    c, q = 3, 16
    thing = torch.tensor([True, False, False])
    fused = uncovered = segments = 0
    for seed in range(6):
        cls, msk = _logits(2, q, c, 40, 36, seed)
        got = panoptic_merge(cls, msk, thing, score_thresh=0.7, overlap_thresh=0.6)
        for i in range(2):
            seg, info, n = _paper_panoptic(cls[i], msk[i], thing.tolist(), 0.7, 0.6)
            assert torch.equal(got[i]["segments"], seg)
            assert [{k: s[k] for k in ("id", "category", "is_thing")} for s in got[i]["segments_info"]] == \
                [{k: s[k] for k in ("id", "category", "is_thing")} for s in info]
            for s, r in zip(got[i]["segments_info"], info):
                assert abs(s["score"] - r["score"]) < 1e-6 and s["area"] == int((seg == s["id"]).sum())
            fused += n
            segments += len(info)
            uncovered += int((seg == 0).sum())
    assert segments > 10 and fused and uncovered  # the cases HF's rules differ on were exercised


def test_panoptic_merge_without_any_kept_query_is_all_void():
    cls = torch.zeros(1, 4, 4)
    cls[..., -1] = 10.0  # every query says no-object
    out = panoptic_merge(cls, torch.randn(1, 4, 8, 8), torch.tensor([True, False, False]))
    assert out[0]["segments_info"] == [] and not out[0]["segments"].any()


def test_panoptic_output_goes_into_panoptic_quality():
    cls, msk = _logits(1, 8, 3, 32, 32, seed=1)
    thing = torch.tensor([True, False, False])
    pred = panoptic_merge(cls, msk, thing, score_thresh=0.5, overlap_thresh=0.5)[0]
    assert pred["segments_info"]
    pq = PanopticQuality(num_classes=3, num_stuff=2)
    pq.update([pred], [pred])  # a prediction equals itself
    assert abs(pq.compute()["pq"] - 1.0) < 1e-9


def test_semantic_merge_resizes_the_masks_first():
    cls, msk = torch.randn(1, 3, 4), torch.randn(1, 3, 8, 8)
    up = torch.nn.functional.interpolate(msk, size=(16, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(semantic_merge(cls, msk, size=(16, 12)), semantic_merge(cls, up))
    assert semantic_merge(cls, msk).shape == (1, 3, 8, 8)


def test_instance_merge_topk_scores_and_things():
    g = torch.Generator().manual_seed(0)
    cls, msk = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 10, 10, generator=g) * 3
    out = instance_merge(cls, msk, topk=5)
    probs = cls.softmax(-1)[..., :-1]
    for i in range(2):
        o = out[i]
        assert o["scores"].shape == (5,) and torch.all(o["scores"][:-1] >= o["scores"][1:])
        # each score = class probability of some (query, label) pair x its mask score
        for s, lab, m in zip(o["scores"], o["labels"], o["masks"]):
            fg = m > 0.5
            mask_score = (m * fg).sum() / (fg.sum() + 1e-6)
            hits = [qi for qi in range(6) if torch.allclose(msk[i, qi].sigmoid(), m)]
            assert hits and torch.isclose(s, probs[i, hits[0], lab] * mask_score)
    only = instance_merge(cls, msk, topk=5, thing_classes=torch.tensor([True, False, False]))
    for i in range(2):
        assert torch.all(only[i]["labels"] == 0)
        assert len(only[i]["labels"]) == int((out[i]["labels"] == 0).sum())


def test_mask_boxes_cover_the_pixels():
    m = torch.zeros(3, 6, 8, dtype=torch.bool)
    m[0, 1:3, 2:5] = True
    m[1, 5, 7] = True
    boxes = mask_boxes(m)
    assert boxes.tolist() == [[2, 1, 5, 3], [7, 5, 8, 6], [0, 0, 0, 0]]
