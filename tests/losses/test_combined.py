"""model.loss: losses chosen by name in the builder and the config, weighted and summed."""

import pytest
import torch

import segzoo
from segzoo.config import ConfigError, load_config
from segzoo.data.targets import CLASS_MAP
from segzoo.losses import cross_entropy, dice_loss, lovasz_softmax, parse_loss, tversky_loss


def _unet(**kw):
    return segzoo.build("unet", num_classes=3, channels=[8, 16], **kw)


def test_model_loss_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(0)
    model = _unet(loss=[{"name": "lovasz"}, {"name": "dice", "weight": 0.5},
                        {"name": "tversky", "alpha": 0.2, "beta": 0.8, "weight": 2}])
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    y[0, :4] = 255
    out = model(x, y)
    assert set(out) == {"loss_lovasz", "loss_dice", "loss_tversky", "loss"}
    logits = model(x)
    torch.testing.assert_close(out["loss_lovasz"], lovasz_softmax(logits, y))
    torch.testing.assert_close(out["loss_tversky"], tversky_loss(logits, y, alpha=0.2, beta=0.8))
    torch.testing.assert_close(out["loss"], out["loss_lovasz"] + 0.5 * out["loss_dice"] + 2 * out["loss_tversky"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_class_weights_reach_every_term_unless_a_term_has_its_own():
    torch.manual_seed(0)
    model = _unet(loss=["ce", {"name": "dice", "class_weights": [0.0, 1.0, 1.0]}], class_weights=[1.0, 2.0, 3.0])
    x, y = torch.rand(1, 3, 32, 32), torch.randint(0, 3, (1, 32, 32))
    out, logits = model(x, y), model(x)
    torch.testing.assert_close(out["loss_ce"], cross_entropy(logits, y, weight=[1.0, 2.0, 3.0]))
    torch.testing.assert_close(out["loss_dice"], dice_loss(logits, y, weight=[0.0, 1.0, 1.0]))


def test_model_loss_round_trips_through_a_checkpoint(tmp_path):
    model = _unet(loss=[{"name": "focal_tversky", "gamma": 0.5}, {"name": "bce", "weight": 0.25}])
    segzoo.save(model, tmp_path / "m.safetensors")
    loaded = segzoo.load(tmp_path / "m.safetensors")
    assert loaded.loss_terms == model.loss_terms
    assert [t.name for t in loaded.loss_terms] == ["focal_tversky", "bce"]


@pytest.mark.parametrize(("spec", "message"), [
    ([{"name": "lovaz"}], "did you mean 'lovasz'"),
    ([{"name": "tversky", "alfa": 0.3}], "did you mean 'alpha'"),
    ([{"name": "tversky", "alpha": -1.0}], r"loss\[0\] \(tversky\): tversky alpha and beta must be >= 0"),
    ([{"name": "dice"}, "dice"], "more than once"),
    ([{"name": "dice", "class_weights": [1, 2]}], "one weight per class"),
    ([{"name": "focal", "gamma": "big"}], "must be like its default"),
    ([{"name": "dice", "weight": -1}], "finite number >= 0"),
    ([{"weight": 1}], "has no name"),
    ([], "is empty"),
])
def test_bad_loss_specs_fail_when_the_model_is_built(spec, message):
    with pytest.raises(ValueError, match=message):
        _unet(loss=spec)


def test_loss_excludes_the_older_switches():
    with pytest.raises(ValueError, match="loss replaces dice_weight"):
        _unet(loss=["lovasz"], dice_weight=0.5)
    with pytest.raises(ValueError, match="loss replaces dice_weight and ohem_thresh"):
        _unet(loss=["lovasz"], ohem_thresh=0.7)


def test_config_reads_model_loss_and_names_the_bad_entry(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: unet\n  loss: [{name: lovasz}, {name: dice, weight: 0.5}]\n")
    cfg = load_config(path)
    assert cfg.model["loss"] == [{"name": "lovasz"}, {"name": "dice", "weight": 0.5}]
    assert [t.weight for t in parse_loss(cfg.model["loss"])] == [1.0, 0.5]
    with pytest.raises(ConfigError, match=r"model\.loss\[1\]: dice has no option 'smoth'; did you mean 'smooth'"):
        load_config(path, ["model.loss=[lovasz, {name: dice, smoth: 2}]"])
    with pytest.raises(ConfigError, match=r"model\.loss: unknown loss 'tverski'"):
        load_config(path, ["model.loss=tverski"])


def test_a_model_trains_on_a_config_loss(tmp_path):
    from segzoo.data import Shapes, build_transforms
    from segzoo.engine.build import build_trainer

    torch.manual_seed(0)
    kw = dict(num_train=8, num_val=2, size=32)
    train = Shapes(tmp_path / "shapes", "train", transforms=build_transforms(CLASS_MAP, True, size=32), **kw)
    val = Shapes(tmp_path / "shapes", "val", transforms=build_transforms(CLASS_MAP, False), **kw)
    model = segzoo.build("unet", num_classes=train.num_classes, channels=[8, 16],
                         loss=[{"name": "lovasz"}, {"name": "boundary_dice", "weight": 0.5}])
    cfg = {"data": {"batch_size": 4, "num_workers": 0}, "eval": {"num_pictures": 0},
           "train": {"epochs": 1, "lr": 0.01, "progress": False, "tensorboard": False, "device": "cpu"}}
    build_trainer(model, train, val, cfg, tmp_path / "run", classes=train.classes).fit()
    import json

    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "train"]
    assert steps and all("loss_lovasz" in r and "loss_boundary_dice" in r for r in steps)
