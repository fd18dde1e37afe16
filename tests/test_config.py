"""YAML configs: the _base_ rule, key.sub=value overrides, validation, and every recipe in configs/."""

import dataclasses
from pathlib import Path

import pytest

from segzoo.config import AugmentConfig, ConfigError, TrainConfig, load_config, merge, parse_override

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_inheritance_merges_mappings_and_replaces_other_values(tmp_path):
    _write(tmp_path / "base" / "data.yaml", "data:\n  batch_size: 4\n  augment: {size: 64, scale: [0.5, 2.0]}\n")
    _write(tmp_path / "base" / "sched.yaml", "train: {lr: 0.1, epochs: 3}\nmodel: {name: fcn_resnet50}\n")
    child = _write(tmp_path / "child.yaml", "_base_: [base/data.yaml, base/sched.yaml]\n"
                                            "train: {lr: 0.2}\ndata: {augment: {scale: [1.0, 1.0]}}\n")
    cfg = load_config(child)
    assert cfg.train.lr == 0.2 and cfg.train.epochs == 3  # merged key by key
    assert cfg.data.augment == AugmentConfig(size=64, scale=(1.0, 1.0))  # list replaced, other keys default
    assert cfg.data.batch_size == 4 and cfg.train.momentum == TrainConfig().momentum
    assert cfg.name == "child"
    grandchild = _write(tmp_path / "g.yaml", "_base_: child.yaml\ntrain: {epochs: 9}\n")
    assert load_config(grandchild).train == dataclasses.replace(cfg.train, epochs=9)


def test_base_cycle_and_missing_files(tmp_path):
    _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no model.name"):
        load_config(_write(tmp_path / "c.yaml", "train: {epochs: 1}\n"))


def test_overrides_are_typed_and_validated():
    base = {"model": {"name": "fcn_resnet50"}}
    cfg = load_config(base=base, overrides=["train.epochs=2", "model.backbone=resnet18", "train.lr=1e-3",
                                            "data.augment.size=[64, 96]", "train.clip_grad=null", "train.amp=bf16"])
    assert cfg.train.epochs == 2 and cfg.model["backbone"] == "resnet18"
    assert cfg.train.lr == 0.001 and cfg.data.augment.size == (64, 96)
    assert cfg.train.clip_grad is None and cfg.train.amp == "bf16"
    assert parse_override("data.train.images=a=b") == (["data", "train", "images"], "a=b")
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        load_config(base=base, overrides=["train.lrr=0.1"])
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(base=base, overrides=["trian.lr=0.1"])
    with pytest.raises(ConfigError, match="did you mean 'data.augment.size'"):
        load_config(base=base, overrides=["data.augment.sise=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(base=base, overrides=["epochs"])
    with pytest.raises(ConfigError, match="name a section"):
        load_config(base=base, overrides=["epochs=3"])
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(base={**base, "train": 3})


def test_merge_does_not_alias_inputs():
    a = {"x": {"y": [1]}}
    out = merge(a, {"x": {"z": 2}})
    out["x"]["y"].append(2)
    assert a == {"x": {"y": [1]}}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_builds_and_its_data_passes_checks(path, tmp_path_factory):
    import segzoo
    from segzoo.engine.build import build_model, check_data

    cfg = load_config(path)
    if cfg.model["name"] not in segzoo.list_models():
        pytest.skip(f"{cfg.model['name']} is not registered yet")
    root = tmp_path_factory.getbasetemp() / "recipe_shapes"
    small = {"num_train": 4, "num_val": 2, "size": 64}
    cfg = load_config(path, [f"data.root={root}", f"data.train={small}", f"data.val={small}"])
    model = build_model(cfg)
    reports = check_data(cfg, model.spec.num_classes, model, print_fn=None)
    assert all(r.ok for r in reports), [r.format() for r in reports]


FINETUNE = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs" / "finetune").glob("*.yaml"))


@pytest.mark.parametrize("path", FINETUNE, ids=lambda p: p.stem)
def test_finetune_recipe_parses_and_builds(path):
    """The fine-tuning recipes on the real tiles parse and build (without fetching any weights)."""
    from segzoo.engine.build import build_model

    assert FINETUNE, "configs/finetune/ holds no recipe"
    cfg = load_config(path, ["model.backbone_weights=null"])
    assert cfg.data.type in ("nuclei", "tree_crowns")
    model = build_model(cfg)
    assert model.spec.name == cfg.model["name"]
