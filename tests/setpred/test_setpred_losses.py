"""SetCriterion and HungarianMatcher beyond the Hugging Face comparison: float32 under autocast and
with half-precision logits, empty targets, clear errors, and a matching that is the optimum."""

from __future__ import annotations

import itertools

import pytest
import torch

from segzoo.setpred import HungarianMatcher, SetCriterion

pytest.importorskip("scipy")


def _inputs(b=2, q=6, c=4, h=16, w=16, ks=(2, 3), dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    cls = (torch.randn(b, q, c + 1, generator=g) * 3).to(dtype).requires_grad_()
    msk = (torch.randn(b, q, h, w, generator=g) * 30).to(dtype).requires_grad_()  # large: fp16 BCE would overflow
    targets = [{"labels": torch.randint(0, c, (k,), generator=g),
                "masks": torch.rand(k, 2 * h, 2 * w, generator=g) > 0.5} for k in ks]
    return cls, msk, targets


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_give_finite_float32_losses(dtype):
    cls, msk, targets = _inputs(dtype=dtype)
    crit = SetCriterion(4, num_points=256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crit(cls, msk, targets, aux=[(cls * 0.5, msk * 0.5)])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert torch.isfinite(msk.grad.float()).all() and msk.grad.abs().sum() > 0
    # the same numbers as float32 logits of the same values
    torch.manual_seed(0)
    ref = crit(cls.detach().float(), msk.detach().float(), targets, aux=[(cls.detach().float() * 0.5,
                                                                          msk.detach().float() * 0.5)])
    torch.manual_seed(0)
    again = crit(cls.detach(), msk.detach(), targets, aux=[(cls.detach() * 0.5, msk.detach() * 0.5)])
    assert all(torch.equal(again[k], ref[k]) for k in ref)


def test_a_batch_without_targets_gives_the_no_object_loss_only():
    cls, msk, _ = _inputs()
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}] * 2
    out = SetCriterion(4, num_points=64)(cls, msk, empty)
    assert out["loss_mask"] == 0 and out["loss_dice"] == 0
    expected = torch.nn.functional.cross_entropy(cls.transpose(1, 2), torch.full((2, 6), 4))
    torch.testing.assert_close(out["loss_class"], expected)
    out["loss"].backward()
    assert msk.grad is not None


def test_the_total_is_the_weighted_sum_and_deep_supervision_names_each_layer():
    cls, msk, targets = _inputs()
    out = SetCriterion(4, class_weight=2.0, mask_weight=5.0, dice_weight=3.0, num_points=64)(
        cls, msk, targets, aux=[(cls, msk)] * 3)
    assert set(out) == {"loss"} | {f"loss_{n}{s}" for n in ("class", "mask", "dice") for s in ("", "_0", "_1", "_2")}
    total = sum({"class": 2.0, "mask": 5.0, "dice": 3.0}[k.split("_")[1]] * v for k, v in out.items() if k != "loss")
    torch.testing.assert_close(out["loss"], total)


def test_a_generator_makes_the_points_reproducible():
    cls, msk, targets = _inputs()
    a = SetCriterion(4, num_points=64, generator=torch.Generator().manual_seed(5))(cls, msk, targets)
    torch.manual_seed(123)  # the global seed does not matter with a generator
    b = SetCriterion(4, num_points=64, generator=torch.Generator().manual_seed(5))(cls, msk, targets)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_matching_is_the_minimum_cost_assignment():
    cls, msk, targets = _inputs(q=5, ks=(3, 4))
    m = HungarianMatcher(num_points=128, generator=torch.Generator().manual_seed(0))
    from segzoo.setpred.matcher import pad_target_masks
    masks, labels, sizes = pad_target_masks(targets, cls.device)
    cost = m.cost_matrices(cls, msk, masks, labels)
    m.generator = torch.Generator().manual_seed(0)
    got = m(cls, msk, targets)
    for i, k in enumerate(sizes):
        best = min(itertools.permutations(range(5), k), key=lambda qs: sum(cost[i, q, j] for j, q in enumerate(qs)))
        q_idx, k_idx = got[i]
        assert sorted(zip(k_idx.tolist(), q_idx.tolist())) == list(enumerate(best))


def test_nan_costs_do_not_break_matching():
    cls, msk, targets = _inputs()
    cls = cls.detach().clone()
    cls[0, 0] = float("nan")
    got = HungarianMatcher(num_points=32)(cls, msk.detach(), targets)
    assert 0 not in got[0][0].tolist()  # the NaN query is matched only when nothing else is left


@pytest.mark.parametrize("targets, match", [
    ([{"labels": torch.tensor([0])}], "needs 'labels'"),
    ([{"labels": torch.tensor([0, 1]), "masks": torch.zeros(1, 4, 4)}], "same K"),
    ([{"labels": torch.tensor([4]), "masks": torch.zeros(1, 4, 4)}], "num_classes=4"),
    ([{"labels": torch.tensor([-1]), "masks": torch.zeros(1, 4, 4)}], "0-based"),
    ([{"labels": torch.tensor([1.0]), "masks": torch.zeros(1, 4, 4)}], "integer class indices"),
])
def test_bad_targets_are_refused_with_the_fix(targets, match):
    cls, msk, _ = _inputs(b=1, ks=(1,))
    with pytest.raises(ValueError, match=match):
        SetCriterion(4, num_points=16)(cls, msk, targets)


def test_wrong_class_count_and_batch_size_are_refused():
    cls, msk, targets = _inputs()
    with pytest.raises(ValueError, match="num_classes \\+ 1"):
        SetCriterion(5, num_points=16)(cls, msk, targets)
    with pytest.raises(ValueError, match="one dict per image"):
        SetCriterion(4, num_points=16)(cls, msk, targets[:1])
