"""Config merging never falls back silently: empty sections are errors naming the file, every default is printed."""

import dataclasses

import pytest

from segzoo.cli import main as cli
from segzoo.config import SECTIONS, ConfigError, load_config

BASE = "model: {name: unet, num_classes: 2, channels: [4, 8, 16, 32, 64]}\ndata: {type: voc, root: somewhere}\n"


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(("child", "key"), [
    ("data:\n", "data"),                                   # nothing under it
    ("data:\n#  type: voc\n#  root: x\n", "data"),         # every line commented out
    ("train: null\n", "train"),
    ("eval: {}\n", "eval"),
    ("data:\n  augment:\n", "data.augment"),
    ("model:\n", "model"),
])
def test_empty_section_in_a_child_is_an_error_naming_file_and_key(child, key, tmp_path):
    write(tmp_path / "base.yaml", BASE)
    path = write(tmp_path / "child.yaml", "_base_: base.yaml\n" + child)
    with pytest.raises(ConfigError, match=rf"child.yaml: config section '{key}' is empty"):
        load_config(path)


def test_empty_section_without_a_base_and_through_overrides(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: config section 'data' is empty"):
        load_config(write(tmp_path / "c.yaml", "model: {name: unet}\ndata:\ntrain: {epochs: 1}\n"))
    with pytest.raises(ConfigError, match=r"'data.augment' is empty"):
        load_config(write(tmp_path / "d.yaml", BASE), overrides=["data.augment=null"])
    with pytest.raises(ConfigError, match=r"'_base_' is empty"):
        load_config(write(tmp_path / "e.yaml", "_base_:\n" + BASE))


def test_empty_data_section_does_not_train_on_shapes(tmp_path, capsys):
    """Before: an empty ``data:`` trained on the built-in Shapes data and reported success."""
    path = write(tmp_path / "c.yaml", "model: {name: unet, num_classes: 2}\ndata:\ntrain: {max_steps: 1}\n")
    assert cli(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'data' is empty" in err and str(path) in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    assert cli(["data", "check", str(path)]) == 2  # the data check refuses it the same way
    assert "'data' is empty" in capsys.readouterr().err


def test_a_folder_for_the_config_says_so(tmp_path, capsys):
    assert cli(["train", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a YAML config file" in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    write(tmp_path / "c.yaml", "_base_: sub\n" + BASE)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match="sub is a folder"):
        load_config(tmp_path / "c.yaml")


def test_resolved_config_shows_every_default(tmp_path):
    from segzoo.config import dump

    write(tmp_path / "base.yaml", BASE)
    text = dump(load_config(write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain: {epochs: 1}\n")))
    import yaml

    shown = yaml.safe_load(text)
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name in shown[section], f"{section}.{f.name} missing from the printed config"
    assert set(shown["data"]["augment"]) == {f.name for f in dataclasses.fields(SECTIONS["data"].__dataclass_fields__[
        "augment"].default_factory)}
