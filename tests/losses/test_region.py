"""Tversky, focal-Tversky, soft BCE and boundary-aware Dice: against smp's losses (value and gradient)
where smp has them, and against their formulas."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segzoo.losses import (
    boundary_band,
    boundary_dice_loss,
    dice_loss,
    focal_tversky_loss,
    soft_bce_loss,
    tversky_index,
    tversky_loss,
)

smp_losses = pytest.importorskip("segmentation_models_pytorch.losses", reason="smp is the reference")


def _batch(seed=0, n=2, c=4, h=6, w=7, ignore=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g) * 2
    targets = torch.randint(0, c, (n, h, w), generator=g)
    targets[torch.rand(n, h, w, generator=g) < ignore] = 255
    return logits, targets


def _value_and_grad(fn, logits, *args):
    x = logits.clone().requires_grad_(True)
    loss = fn(x, *args)
    loss.backward()
    return loss.detach(), x.grad


def _close(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("alpha", "beta", "weight"), [(0.3, 0.7, None), (0.5, 0.5, None), (0.8, 0.1, [1, 2, 0.5, 3])])
def test_tversky_equals_smp(alpha, beta, weight):
    logits, targets = _batch()  # every class present: smp zeroes absent classes' losses, segzoo keeps them
    ref = smp_losses.TverskyLoss("multiclass", smooth=1.0, ignore_index=255, alpha=alpha, beta=beta,
                                 class_weights=weight)
    _close(_value_and_grad(lambda x, t: tversky_loss(x, t, alpha=alpha, beta=beta, weight=weight), logits, targets),
           _value_and_grad(ref, logits, targets))


def test_tversky_with_equal_weights_is_dice_and_counts_fp_and_fn_as_told():
    logits, targets = _batch(seed=1)
    # (TP + s) / (TP + FP/2 + FN/2 + s) = (2TP + 2s) / (|P| + |G| + 2s): Dice with smooth 2s
    torch.testing.assert_close(tversky_loss(logits, targets, alpha=0.5, beta=0.5, smooth=0.5),
                               dice_loss(logits, targets))
    valid = targets != 255
    p = logits.softmax(1)
    for c in range(4):
        pc, gc = p[:, c][valid], (targets[valid] == c).float()
        tp, fp, fn = (pc * gc).sum(), (pc * (1 - gc)).sum(), ((1 - pc) * gc).sum()
        expected = (tp + 1) / (tp + 0.2 * fp + 0.9 * fn + 1)
        torch.testing.assert_close(tversky_index(logits, targets, alpha=0.2, beta=0.9)[c], expected)


def test_focal_tversky_is_the_formula_and_tversky_at_gamma_one():
    logits, targets = _batch(seed=2)
    ti = tversky_index(logits, targets)
    w = torch.tensor([1.0, 0.5, 2.0, 1.0])
    torch.testing.assert_close(focal_tversky_loss(logits, targets, weight=w),
                               ((1 - ti) ** 0.75 * w).sum() / w.sum())
    torch.testing.assert_close(focal_tversky_loss(logits, targets, gamma=1.0), tversky_loss(logits, targets))
    ref = smp_losses.TverskyLoss("multiclass", smooth=1.0, ignore_index=255, alpha=0.3, beta=0.7, gamma=1.0)
    _close(_value_and_grad(lambda x, t: focal_tversky_loss(x, t, gamma=1.0), logits, targets),
           _value_and_grad(ref, logits, targets))
    with pytest.raises(ValueError, match="gamma must be > 0"):
        focal_tversky_loss(logits, targets, gamma=0)


@pytest.mark.parametrize(("smooth_factor", "weight"), [(0.0, None), (0.1, [1.0, 2.0, 0.5, 3.0])])
def test_soft_bce_equals_smp(smooth_factor, weight):
    logits, targets = _batch(seed=3)
    valid = targets != 255
    onehot = F.one_hot(targets.clamp(max=3), 4).permute(0, 3, 1, 2).float()
    onehot[(~valid)[:, None].expand_as(onehot)] = 255  # smp ignores elementwise
    w = None if weight is None else torch.tensor(weight)[None, :, None, None]
    ref = smp_losses.SoftBCEWithLogitsLoss(ignore_index=255, smooth_factor=smooth_factor or None, weight=w,
                                           reduction="sum")
    norm = valid.sum() * (4 if weight is None else sum(weight))
    _close(_value_and_grad(lambda x, t: soft_bce_loss(x, t, smooth_factor=smooth_factor, weight=weight),
                           logits, targets),
           _value_and_grad(lambda x, t: ref(x, t) / norm, logits, onehot))


def test_soft_bce_binary_channel_uses_the_labels():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 1, 5, 5, generator=g)
    targets = torch.randint(0, 2, (2, 5, 5), generator=g)
    targets[0, 0] = 255
    valid = targets != 255
    expected = F.binary_cross_entropy_with_logits(logits[:, 0][valid], targets[valid].float())
    torch.testing.assert_close(soft_bce_loss(logits, targets), expected)


def _band_brute_force(targets, width, ignore=255):
    t = targets.numpy()
    out = np.zeros(t.shape, bool)
    n, h, w = t.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                if t[i, y, x] == ignore:
                    continue
                win = t[i, max(0, y - width):y + width + 1, max(0, x - width):x + width + 1]
                out[i, y, x] = bool(((win != ignore) & (win != t[i, y, x])).any())
    return torch.from_numpy(out)


@pytest.mark.parametrize("width", [1, 2])
def test_boundary_band_is_every_pixel_near_another_class(width):
    _, targets = _batch(seed=5, h=9, w=11, c=3, ignore=0.15)
    targets[1] = 0
    targets[1, 2:6, 3:8] = 2  # a square: its outline and the background around it
    assert torch.equal(boundary_band(targets, 3, width=width), _band_brute_force(targets, width))


def test_boundary_dice_weights_the_band_and_is_dice_without_it():
    logits, targets = _batch(seed=6, h=10, w=10)
    torch.testing.assert_close(boundary_dice_loss(logits, targets, boundary_weight=0.0), dice_loss(logits, targets))
    u = (1 + 3.0 * _band_brute_force(targets, 2).float()) * (targets != 255)
    p = logits.softmax(1)
    per_class = []
    for c in range(4):
        gc = (targets == c).float()
        inter = (u * p[:, c] * gc).sum()
        per_class.append(1 - (2 * inter + 1) / ((u * p[:, c]).sum() + (u * gc).sum() + 1))
    w = torch.tensor([2.0, 1.0, 1.0, 0.5])
    expected = (torch.stack(per_class) * w).sum() / w.sum()
    torch.testing.assert_close(boundary_dice_loss(logits, targets, width=2, boundary_weight=3.0, weight=w), expected)


def test_dice_class_weights_average_the_classes():
    logits, targets = _batch(seed=7)
    w = [1.0, 0.0, 0.0, 0.0]
    valid = targets != 255
    p0, g0 = logits.softmax(1)[:, 0][valid], (targets[valid] == 0).float()
    expected = 1 - (2 * (p0 * g0).sum() + 1) / (p0.sum() + g0.sum() + 1)
    torch.testing.assert_close(dice_loss(logits, targets, weight=w), expected)


@pytest.mark.parametrize("fn", [tversky_loss, focal_tversky_loss, soft_bce_loss, boundary_dice_loss])
def test_ignored_pixels_do_not_count_and_empty_batches_give_zero(fn):
    logits, targets = _batch(seed=8)
    changed = logits.clone()
    changed[targets[:, None].expand_as(logits) == 255] = 40.0
    torch.testing.assert_close(fn(changed, targets), fn(logits, targets))
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = fn(x, torch.full((1, 4, 4), 255))
    assert torch.isfinite(loss) and float(loss.detach()) <= 1.0
    loss.backward()
    assert torch.isfinite(x.grad).all()
    if fn is soft_bce_loss:
        assert float(loss.detach()) == 0.0


def test_bad_options_are_refused():
    logits, targets = _batch()
    with pytest.raises(ValueError, match="alpha and beta must be >= 0"):
        tversky_loss(logits, targets, alpha=-0.1)
    with pytest.raises(ValueError, match="width must be >= 1"):
        boundary_dice_loss(logits, targets, width=0)
    with pytest.raises(ValueError, match="smooth_factor"):
        soft_bce_loss(logits, targets, smooth_factor=1.0)
    with pytest.raises(ValueError, match="one weight per class"):
        tversky_loss(logits, targets, weight=[1.0, 2.0])
