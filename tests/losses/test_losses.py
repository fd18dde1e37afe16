"""Semantic losses: values against direct formulas, ignore_index, and the models' dice_weight."""

import pytest
import torch
import torch.nn.functional as F

import segzoo
from segzoo.losses import CITYSCAPES_CLASS_WEIGHTS, cross_entropy, dice_loss, focal_loss, ohem_cross_entropy


def test_dice_matches_the_formula_and_skips_ignored_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (2, 5, 6), generator=g)
    targets[0, 0, :3] = 255
    valid = targets != 255
    p = logits.softmax(1)
    per_class = []
    for c in range(3):
        pc, gc = p[:, c][valid], (targets[valid] == c).double()
        per_class.append((2 * (pc * gc).sum() + 1) / (pc.sum() + gc.sum() + 1))
    expected = 1 - torch.stack(per_class).mean()
    torch.testing.assert_close(dice_loss(logits, targets).double(), expected, rtol=1e-6, atol=1e-6)
    # the ignored pixels' logits have no effect
    changed = logits.clone()
    changed[0, :, 0, :3] = 50.0
    torch.testing.assert_close(dice_loss(changed, targets), dice_loss(logits, targets))


def test_dice_is_small_for_confident_correct_logits_and_large_for_wrong_ones():
    targets = torch.randint(0, 4, (1, 8, 8))
    onehot = F.one_hot(targets, 4).permute(0, 3, 1, 2).float()
    assert float(dice_loss(onehot * 40, targets)) < 1e-3
    assert float(dice_loss(onehot.roll(1, dims=1) * 40, targets)) > 0.7


def test_cross_entropy_is_zero_without_labelled_pixels():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 4, 4), 255))
    assert float(loss) == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ["unet", "fcn_resnet50"])
def test_models_add_the_weighted_dice_loss(name, small_model):
    torch.manual_seed(0)
    plain = small_model(name)
    with_dice = small_model(name, dice_weight=0.5)
    with_dice.load_state_dict(plain.state_dict())
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))

    def run(model, *args):  # the same dropout masks for each call
        torch.manual_seed(1)
        return model.train()(x, *args)

    ref, out = run(plain, y), run(with_dice, y)
    assert "loss_dice" not in ref
    torch.testing.assert_close(out["loss_ce"], ref["loss_ce"])
    torch.testing.assert_close(out["loss"], ref["loss"] + 0.5 * out["loss_dice"])
    torch.testing.assert_close(out["loss_dice"], dice_loss(run(with_dice), y))


def test_negative_dice_weight_is_rejected():
    with pytest.raises(ValueError, match="dice_weight"):
        segzoo.build("unet", num_classes=2, channels=[8, 16], dice_weight=-1)


def test_dice_weight_round_trips_through_a_checkpoint(tmp_path):
    model = segzoo.build("unet", num_classes=3, channels=[8, 16], dice_weight=0.5)
    segzoo.save(model, tmp_path / "m.safetensors")
    assert segzoo.load(tmp_path / "m.safetensors").dice_weight == 0.5


# ---------------------------------------------------------------- class weights, OHEM, focal


def _batch(seed=0, n=2, c=4, h=6, w=7, ignore=0.2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=dtype) * 2
    targets = torch.randint(0, c, (n, h, w), generator=g)
    targets[torch.rand(n, h, w, generator=g) < ignore] = 255
    return logits, targets


def test_weighted_cross_entropy_equals_torch_weighted_mean():
    logits, targets = _batch()
    weight = [0.5, 2.0, 1.0, 0.25]
    ref = F.cross_entropy(logits, targets, weight=torch.tensor(weight, dtype=torch.float64), ignore_index=255)
    torch.testing.assert_close(cross_entropy(logits, targets, weight=weight).double(), ref, rtol=1e-6, atol=1e-6)
    # without weights it is the plain mean over labelled pixels, as before
    torch.testing.assert_close(cross_entropy(logits, targets).double(),
                               F.cross_entropy(logits, targets, ignore_index=255), rtol=1e-6, atol=1e-6)


def test_cityscapes_class_weights_are_the_official_19():
    assert len(CITYSCAPES_CLASS_WEIGHTS) == 19
    assert CITYSCAPES_CLASS_WEIGHTS[0] == 0.8373 and CITYSCAPES_CLASS_WEIGHTS[-1] == 1.0507


def test_bad_class_weights_are_rejected():
    logits, targets = _batch()
    with pytest.raises(ValueError, match="one weight per class"):
        cross_entropy(logits, targets, weight=[1.0, 1.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        cross_entropy(logits, targets, weight=[1.0, -1.0, 1.0, 1.0])


def official_ohem(score, target, thresh, min_kept, weight=None, ignore=255):
    """The official HRNet OhemCrossEntropy._ohem_forward, restated (score at label size)."""
    min_kept = max(1, min_kept)
    w = None if weight is None else torch.tensor(weight, dtype=score.dtype)
    pixel_losses = F.cross_entropy(score, target, weight=w, ignore_index=ignore, reduction="none").reshape(-1)
    mask = target.reshape(-1) != ignore
    tmp = target.clone()
    tmp[tmp == ignore] = 0
    pred = F.softmax(score, dim=1).gather(1, tmp.unsqueeze(1))
    pred, ind = pred.reshape(-1)[mask].sort()
    min_value = pred[min(min_kept, pred.numel() - 1)]
    threshold = max(float(min_value), thresh)
    return pixel_losses[mask][ind][pred < threshold].mean(), int((pred < threshold).sum())


@pytest.mark.parametrize(("thresh", "min_kept", "weight"), [
    (0.7, 5, None),        # the threshold decides: more than min_kept pixels are hard
    (0.3, 40, None),       # min_kept decides: the threshold rises to the 40th smallest probability
    (0.7, 100_000, None),  # min_kept above the pixel count: all but the easiest pixels
    (0.9, 10, [0.5, 2.0, 1.0, 0.25]),
])
def test_ohem_matches_the_official_rule(thresh, min_kept, weight):
    logits, targets = _batch(seed=1)
    ref, kept = official_ohem(logits, targets, thresh, min_kept, weight)
    out = ohem_cross_entropy(logits, targets, thresh=thresh, min_kept=min_kept, weight=weight)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    labelled = int((targets != 255).sum())
    assert kept >= min(min_kept, labelled - 1)
    p = logits.softmax(1).gather(1, torch.where(targets != 255, targets, 0)[:, None])[:, 0][targets != 255]
    assert (kept > int((p < thresh).sum())) == (min_kept > int((p < thresh).sum()))  # which rule decides


def test_ohem_keeps_only_hard_pixels_and_survives_empty_batches():
    logits, targets = _batch(seed=2, ignore=0.0)
    logits.requires_grad_(True)
    ohem_cross_entropy(logits, targets, thresh=0.5, min_kept=1).backward()
    p = logits.detach().softmax(1).gather(1, targets[:, None])[:, 0]
    grad_norm = logits.grad.abs().sum(1)
    assert bool((grad_norm[p >= 0.5] == 0).all()) and bool((grad_norm[p < 0.5] > 0).all())
    empty = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = ohem_cross_entropy(empty, torch.full((1, 4, 4), 255))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(empty.grad).all()
    with pytest.raises(ValueError, match="ohem_thresh"):
        ohem_cross_entropy(empty, torch.zeros(1, 4, 4, dtype=torch.long), thresh=1.5)


def test_focal_matches_its_formula_and_reduces_to_cross_entropy():
    logits, targets = _batch(seed=3)
    valid = targets != 255
    p = logits.softmax(1).gather(1, torch.where(valid, targets, 0)[:, None])[:, 0][valid]
    ref = (-(1 - p) ** 2 * p.log()).mean()
    torch.testing.assert_close(focal_loss(logits, targets, gamma=2.0).double(), ref, rtol=1e-6, atol=1e-6)
    weight = [0.5, 2.0, 1.0, 0.25]
    for w in (None, weight):
        torch.testing.assert_close(focal_loss(logits, targets, gamma=0.0, weight=w),
                                   cross_entropy(logits, targets, weight=w), rtol=1e-6, atol=1e-6)
    changed = logits.clone()
    changed[~valid[:, None].expand_as(changed)] = 30.0  # ignored pixels' logits have no effect
    torch.testing.assert_close(focal_loss(changed, targets), focal_loss(logits, targets))
    assert float(focal_loss(logits, targets, gamma=2.0)) < float(cross_entropy(logits, targets))


# ---------------------------------------------------------------- the models' loss options


@pytest.mark.parametrize("name", ["unet", "pspnet_resnet50"])
def test_models_use_class_weights_and_ohem(name, small_model):
    weights = [0.5, 2.0, 1.0, 0.25]
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    y[:, :4] = 255
    plain = small_model(name, num_classes=4)
    weighted = small_model(name, num_classes=4, class_weights=weights)
    ohem = small_model(name, num_classes=4, class_weights=weights, ohem_thresh=0.6, ohem_min_kept=50)
    for m in (weighted, ohem):
        m.load_state_dict(plain.state_dict())

    def run(model, *args):  # the same dropout masks for each call
        torch.manual_seed(1)
        return model.train()(x, *args)

    logits = run(plain)
    out = run(weighted, y)
    torch.testing.assert_close(out["loss_ce"], cross_entropy(logits, y, weight=weights))
    hard = run(ohem, y)
    torch.testing.assert_close(hard["loss_ce"], ohem_cross_entropy(logits, y, 0.6, 50, weight=weights))
    if "loss_aux" in out:  # the auxiliary head keeps the class-weighted cross-entropy, as HRNet-OCR's
        torch.testing.assert_close(hard["loss_aux"], out["loss_aux"])
        torch.testing.assert_close(hard["loss"], hard["loss_ce"] + ohem.aux_weight * hard["loss_aux"])


def test_loss_options_are_checked_and_recorded_in_the_spec(tmp_path):
    with pytest.raises(ValueError, match="one weight per class"):
        segzoo.build("unet", num_classes=3, channels=[8, 16], class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="ohem_thresh"):
        segzoo.build("unet", num_classes=3, channels=[8, 16], ohem_thresh=0.0)
    model = segzoo.build("unet", num_classes=3, channels=[8, 16], class_weights=[1.0, 2.0, 0.5], ohem_thresh=0.7,
                         ohem_min_kept=1000)
    segzoo.save(model, tmp_path / "m.safetensors")
    back = segzoo.load(tmp_path / "m.safetensors")
    assert back.spec.kwargs["class_weights"] == [1.0, 2.0, 0.5]
    assert (back.ohem_thresh, back.ohem_min_kept) == (0.7, 1000)
    torch.testing.assert_close(back.class_weights, torch.tensor([1.0, 2.0, 0.5]))
