"""Semantic losses: values against direct formulas, ignore_index, and the models' dice_weight."""

import pytest
import torch
import torch.nn.functional as F

import segzoo
from segzoo.losses import cross_entropy, dice_loss


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
