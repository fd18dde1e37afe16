"""The resolved config (``config.yaml`` of a run) shows every ``model`` argument the builder uses that the config
did not set, marked ``# default``; read back, those explicit values build the same model (issue 32, item 1)."""

import pytest
import torch
import yaml

import segzoo
from segzoo.config import dump, load_config
from segzoo.engine.build import build_model, model_defaults, open_run_log
from segzoo.registry import builder_defaults

SMALL_HRNET = {"model": {"name": "hrnet_w18_small", "num_classes": 2}, "train": {"loggers": ["jsonl"]}}


def test_the_resolved_config_shows_the_builder_defaults():
    cfg = load_config("configs/deeplabv3plus.yaml")
    text = dump(cfg, model_defaults(cfg))
    model = text.split("\ndata:")[0]
    assert "output_stride: 16\n" in model  # the config's own key: not marked
    assert "  low_proj: 48  # default\n" in model and "  separable: true  # default\n" in model
    assert "  backbone: resnet50  # default\n" in model  # the variant's value, not the class's
    assert yaml.safe_load(text)["model"]["channels"] == 256
    hrnet = dump(load_config("configs/hrnet.yaml"), model_defaults(load_config("configs/hrnet.yaml")))
    assert "  stage_modules: [1, 4, 3]  # default\n" in hrnet  # the class's keyword defaults, as the variant sets them


def test_reading_the_defaults_back_builds_the_same_model(tmp_path):
    cfg = load_config(base=SMALL_HRNET)
    defaults = model_defaults(cfg)
    assert {"width", "stage_modules", "fuse_mode", "align_corners"} <= set(defaults) and "num_classes" not in defaults
    (tmp_path / "config.yaml").write_text(dump(cfg, defaults))
    again = load_config(tmp_path / "config.yaml")
    assert again.model == {**cfg.model, **defaults}
    a, b = build_model(cfg).state_dict(), build_model(again).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert model_defaults(again) == {}  # nothing left unset


def test_a_run_folder_config_marks_the_defaults(tmp_path):
    cfg = load_config(base=SMALL_HRNET)
    open_run_log(cfg, tmp_path, 2, "semantic", resume=False, step=0, closed=False).close()
    text = (tmp_path / "config.yaml").read_text()
    assert "  width: 16  # default\n" in text and "  num_classes: 2\n" in text


def test_no_defaults_read_for_a_published_tag_nor_what_the_user_set():
    assert builder_defaults("hrnet_w18_small", {"weights": "cityscapes"}) == {}  # the checkpoint brings its own
    assert "width" not in builder_defaults("hrnet_w18_small", {"width": 16})


@pytest.mark.slow
def test_every_model_builds_the_same_with_its_defaults_given():
    """Passing every default explicitly builds the same layers (shapes, on the meta device) for every model."""
    wrong = []
    for name in segzoo.list_models():
        given = builder_defaults(name)
        with torch.device("meta"):
            a, b = segzoo.build(name).state_dict(), segzoo.build(name, **given).state_dict()
        if {k: v.shape for k, v in a.items()} != {k: v.shape for k, v in b.items()}:
            wrong.append(name)
    assert not wrong, wrong
