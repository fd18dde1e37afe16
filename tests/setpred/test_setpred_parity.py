"""The set-prediction stack equals Hugging Face transformers' Mask2Former (test-only reference):
matching indices, losses with deep supervision under the same seed, and the three post-processings."""

from __future__ import annotations

import pytest
import torch

from segzoo.setpred import HungarianMatcher, SetCriterion, instance_merge, panoptic_merge, semantic_merge

hf = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
hf_proc = pytest.importorskip("transformers.models.mask2former.image_processing_mask2former")
pytest.importorskip("scipy")


def _batch(b=2, q=12, c=5, h=24, w=20, th=48, tw=40, ks=(3, 0, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(b, q, c + 1, generator=g) * 2
    mask_logits = torch.randn(b, q, h, w, generator=g) * 3
    targets = []
    for i in range(b):
        k = ks[i % len(ks)]
        targets.append({"labels": torch.randint(0, c, (k,), generator=g),
                        "masks": (torch.rand(k, th, tw, generator=g) > 0.6).float()})
    return class_logits, mask_logits, targets


def _hf_config(c, points):
    from transformers import Mask2FormerConfig
    return Mask2FormerConfig(num_labels=c, train_num_points=points, no_object_weight=0.1, class_weight=2.0,
                             mask_weight=5.0, dice_weight=5.0, oversample_ratio=3.0, importance_sample_ratio=0.75)


@pytest.mark.parametrize("ks", [(3, 4), (5, 1, 2), (0, 3)])
def test_matching_equals_hugging_face(ks):
    cls, msk, targets = _batch(b=len(ks), ks=ks)
    ref = hf.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=500)
    torch.manual_seed(3)
    expected = ref(msk, cls, [t["masks"] for t in targets], [t["labels"] for t in targets])
    torch.manual_seed(3)
    got = HungarianMatcher(2.0, 5.0, 5.0, num_points=500)(cls, msk, targets)
    for (qi, ki), (qe, ke) in zip(got, expected):
        assert torch.equal(qi, qe) and torch.equal(ki, ke)
    assert [len(q) for q, _ in got] == [min(12, k) for k in ks]


def test_the_cost_matrices_equal_hugging_faces_per_image_costs():
    """Not only the argmin: the batched costs are the per-image costs (Q x K_i) to float precision."""
    cls, msk, targets = _batch(b=2, ks=(3, 5))
    m = HungarianMatcher(num_points=300)
    from segzoo.setpred.matcher import pad_target_masks
    masks, labels, sizes = pad_target_masks(targets, cls.device)
    torch.manual_seed(1)
    cost = m.cost_matrices(cls, msk, masks, labels)
    torch.manual_seed(1)
    for i, t in enumerate(targets):
        pts = torch.rand(1, 300, 2)
        pm = hf.sample_point(msk[i][:, None], pts.repeat(12, 1, 1), align_corners=False).squeeze(1)
        tm = hf.sample_point(t["masks"][:, None], pts.repeat(sizes[i], 1, 1), align_corners=False).squeeze(1)
        ref = (5 * hf.pair_wise_sigmoid_cross_entropy_loss(pm, tm) - 2 * cls[i].softmax(-1)[:, t["labels"]]
               + 5 * hf.pair_wise_dice_loss(pm, tm))
        torch.testing.assert_close(cost[i, :, : sizes[i]], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ks", [(3, 4), (2, 0, 6)])
def test_losses_with_deep_supervision_equal_hugging_face(ks):
    c, points = 5, 700
    cls, msk, targets = _batch(b=len(ks), ks=ks, c=c)
    aux = [(torch.randn_like(cls), torch.randn_like(msk) * 2) for _ in range(2)]
    ref = hf.Mask2FormerLoss(_hf_config(c, points), weight_dict={})
    torch.manual_seed(11)
    expected = ref(msk, cls, [t["masks"] for t in targets], [t["labels"] for t in targets],
                   auxiliary_predictions=[{"masks_queries_logits": m, "class_queries_logits": k} for k, m in aux])
    torch.manual_seed(11)
    got = SetCriterion(c, num_points=points)(cls, msk, targets, aux=aux)
    names = {"loss_class": "loss_cross_entropy", "loss_mask": "loss_mask", "loss_dice": "loss_dice"}
    for suffix in ("", "_0", "_1"):
        for ours, theirs in names.items():
            torch.testing.assert_close(got[ours + suffix], expected[theirs + suffix], rtol=1e-5, atol=1e-6)
    total = sum({"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}[k.rstrip("_01")] * v
                for k, v in expected.items())
    torch.testing.assert_close(got["loss"], total, rtol=1e-5, atol=1e-5)
    assert len(got) == 10  # 3 layers x 3 terms + the total


def _covered_logits(b, q, c, h, w, seed):
    """Saturated masks that cover every pixel and confident classes: the inputs on which HF's
    panoptic rules (score-weighted area, winner pixels without the mask test) equal the paper's."""
    g = torch.Generator().manual_seed(seed)
    owner = torch.randint(0, q, (b, 1, h // 8, w // 8), generator=g)
    owner = torch.nn.functional.interpolate(owner.float(), size=(h, w), mode="nearest").long()
    masks = torch.where(torch.arange(q)[None, :, None, None] == owner, 9.0, -9.0)
    masks = masks + torch.randn(b, q, h, w, generator=g)  # noise keeps argmax ties away
    extra = torch.rand(b, q, h, w, generator=g) > 0.97  # a few pixels claimed by a second query
    masks = torch.where(extra, 9.0, masks)
    cls = torch.randn(b, q, c + 1, generator=g)
    best = torch.randint(0, c, (b, q), generator=g)
    cls.scatter_(2, best[..., None], 8.0 + torch.rand(b, q, 1, generator=g))
    return cls, masks


class _Out:
    def __init__(self, cls, msk):
        self.class_queries_logits, self.masks_queries_logits = cls, msk


def test_semantic_merge_equals_hugging_face():
    g = torch.Generator().manual_seed(0)
    cls, msk = torch.randn(2, 7, 5, generator=g), torch.randn(2, 7, 384, 384, generator=g)  # HF resizes to 384
    expected = hf_proc.Mask2FormerImageProcessor().post_process_semantic_segmentation(
        _Out(cls, msk), return_segmentation_scores=True)
    got = semantic_merge(cls, msk)
    for i in range(2):
        torch.testing.assert_close(got[i], expected[i].segmentation_scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(got[i].argmax(0), expected[i].segmentation)


def test_instance_merge_equals_hugging_face():
    cls, msk = _covered_logits(2, 8, 4, 384, 384, seed=2)
    cls[:, ::3] = torch.randn(2, 3, 5)  # a few unconfident queries
    thr = 0.3
    expected = hf_proc.Mask2FormerImageProcessor().post_process_instance_segmentation(
        _Out(cls, msk), threshold=thr, return_binary_maps=True)
    got = instance_merge(cls, msk)
    for i in range(2):
        keep = (got[i]["scores"] >= thr) & (got[i]["masks"] > 0.5).flatten(1).any(1)
        info = expected[i]["segments_info"]
        ref = sorted(zip([s["score"] for s in info], [s["label_id"] for s in info],
                         list(expected[i]["segmentation"].bool())), key=lambda r: -r[0])
        assert len(ref) == int(keep.sum()) > 0
        for (score, label, mask), s, lab, m in zip(ref, got[i]["scores"][keep], got[i]["labels"][keep],
                                                   got[i]["masks"][keep]):
            assert abs(score - float(s)) < 1e-5 and label == int(lab)
            assert torch.equal(mask, m > 0.5)


def test_panoptic_merge_equals_hugging_face():
    c, q = 6, 10
    cls, msk = _covered_logits(2, q, c, 384, 384, seed=4)
    thing = torch.tensor([True, True, True, True, False, False])
    # HF reuses a fused stuff id as the running id (its next segment gets a taken id): one query per stuff class
    for i in range(2):
        best = cls[i, :, :-1].argmax(-1)
        for s in (4, 5):
            dup = (best == s).nonzero().flatten()[1:]
            cls[i, dup, s] = -5.0
            cls[i, dup, 0] = 9.0
    expected = hf_proc.Mask2FormerImageProcessor().post_process_panoptic_segmentation(
        _Out(cls, msk), threshold=0.8, overlap_mask_area_threshold=0.8, label_ids_to_fuse={4, 5})
    got = panoptic_merge(cls, msk, thing, score_thresh=0.8, overlap_thresh=0.8)
    for i in range(2):
        assert torch.equal(got[i]["segments"], expected[i]["segmentation"])
        ref = [(s["id"], s["label_id"], s["score"]) for s in expected[i]["segments_info"]]
        assert [(s["id"], s["category"], round(s["score"], 6)) for s in got[i]["segments_info"]] == ref
        assert len(ref) >= 3
