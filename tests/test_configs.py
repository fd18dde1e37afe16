"""Bad configs: unknown keys, wrong types and missing dataset paths give one clear error, before any training."""

from pathlib import Path

import pytest

from segzoo.cli import main as cli
from segzoo.config import ConfigError, load_config
from segzoo.engine.run import train_from_config

REPO = Path(__file__).resolve().parents[1]
MODEL = {"name": "unet", "num_classes": 2, "channels": [4, 8, 16, 32, 64]}


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "closest"), [
    ("train: {epoch: 2}", "train.epochs"),
    ("train: {learning_rate: 0.1}", "did you mean|valid keys"),
    ("trainn: {epochs: 2}", "train"),
    ("data: {batchsize: 2}", "data.batch_size"),
    ("data: {augment: {hfilp: 0.5}}", "data.augment.hflip"),
    ("eval: {evry: 2}", "eval.every"),
])
def test_unknown_key_names_the_closest(text, closest, tmp_path):
    path = write(tmp_path / "c.yaml", f"model: {{name: unet}}\n{text}\n")
    with pytest.raises(ConfigError, match=rf"unknown config key .*({closest})"):
        load_config(path)


def test_unknown_key_through_the_cli(tmp_path, capsys):
    path = write(tmp_path / "c.yaml", "model: {name: unet}\ntrain: {lr: 0.1}\n")
    assert cli(["train", str(path), "train.warmup_step=5", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'train.warmup_step'; did you mean 'train.warmup_steps'?")
    assert not (tmp_path / "run").exists()  # nothing was started


def test_unknown_key_in_a_base_file(tmp_path):
    write(tmp_path / "base.yaml", "model: {name: unet}\ntrain: {sheduler: cosine}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain: {epochs: 1}\n")
    with pytest.raises(ConfigError, match="'train.sheduler'; did you mean 'train.schedule'"):
        load_config(child)


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=fast", r"'train.lr' must be a number, got 'fast' \(str\) \(default train.lr=0.01\)"),
    ("train.epochs=2.5", r"'train.epochs' must be an integer, got 2.5 \(float\)"),
    ("train.epochs=true", r"'train.epochs' must be an integer, got True"),
    ("data.batch_size=[4]", r"'data.batch_size' must be an integer, got \[4\]"),
    ("train.progress=maybe", r"'train.progress' must be true/false, got 'maybe'"),
    ("data.augment.scale=2", r"'data.augment.scale' must be a list, got 2"),
    ("train.optimizer=3", r"'train.optimizer' must be a string, got 3"),
    ("train.max_steps=ten", r"'train.max_steps' must be an integer, got 'ten'"),
    ("train.clip_grad=high", r"'train.clip_grad' must be a number, got 'high'"),
    ("data.train=3", r"'data.train' must be a mapping, got 3"),
])
def test_wrong_type(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(base={"model": MODEL}, overrides=[override])


def test_wrong_type_in_a_file_and_accepted_forms(tmp_path):
    with pytest.raises(ConfigError, match="'model' must be a mapping, got 'unet'"):
        load_config(write(tmp_path / "a.yaml", "model: unet\n"))
    with pytest.raises(ConfigError, match="'eval' must be a mapping"):
        load_config(write(tmp_path / "b.yaml", "model: {name: unet}\neval: 3\n"))
    # what users write and the loop accepts keeps working
    cfg = load_config(base={"model": MODEL}, overrides=[
        "train.lr=1e-3", "train.lr=2", "train.amp=off", "train.amp=bf16", "data.augment.size=[64, 96]",
        "data.augment.size=128", "train.max_steps=null", "train.clip_grad=1", "data.classes=[a, b]"])
    assert cfg.train.lr == 2 and cfg.train.amp == "bf16" and cfg.data.augment.size == 128


def data_cfg(tmp_path, data):
    return load_config(base={"model": MODEL, "data": data,
                             "train": {"device": "cpu", "progress": False, "tensorboard": False}})


@pytest.mark.parametrize(("data", "message"), [
    ({"type": "coco", "train": {"images": "{tmp}", "annotations": "{tmp}/nope.json"}},
     r"data.train.annotations: COCO annotation file not found: .*nope.json; .*data.train.annotations=PATH"),
    ({"type": "coco", "train": {"images": "{tmp}/no_images", "annotations": "{tmp}/ann.json"}},
     r"data.train.images: COCO image folder not found: .*no_images"),
    ({"type": "mask_folder", "train": {"images": "{tmp}", "masks": "{tmp}/no_masks"}},
     r"data.train.masks: masks folder not found: .*no_masks"),
    ({"type": "coco"}, r"data.train needs data.train.images, data.train.annotations for data.type=coco"),
    ({"type": "mask_folder", "train": {"images": "{tmp}"}}, r"data.train needs data.train.masks"),
    ({"type": "cocco"}, r"unknown data.type 'cocco'; use one of shapes, coco"),
])
def test_missing_dataset_path(data, message, tmp_path):
    (tmp_path / "ann.json").write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}')
    data = {**data, **{s: {k: v.format(tmp=tmp_path) for k, v in data[s].items()}
                       for s in ("train",) if s in data}}
    cfg = data_cfg(tmp_path, data)
    with pytest.raises(ValueError, match=message):
        train_from_config(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_dataset_path_through_the_cli(tmp_path, capsys):
    data = f"data: {{type: mask_folder, train: {{images: {tmp_path}/im, masks: {tmp_path}/m}}}}\n"
    path = write(tmp_path / "c.yaml", "model: {name: unet, num_classes: 2, channels: [4, 8, 16, 32, 64]}\n"
                                      f"{data}train: {{device: cpu}}\n")
    assert cli(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "error: data.train.images: images folder not found" in err and "Traceback" not in err


@pytest.mark.parametrize(("override", "message"), [
    ("train.clip_grad=-1", r"'train.clip_grad' must be > 0, got -1"),  # -1 would turn training into ascent
    ("train.clip_grad=0", r"'train.clip_grad' must be > 0"),
    ("train.lr=0", r"'train.lr' must be > 0, got 0"),
    ("train.lr=-0.1", r"'train.lr' must be > 0"),
    ("train.lr=.nan", r"'train.lr' must be a finite number, got nan"),
    ("train.lr=.inf", r"'train.lr' must be a finite number, got inf"),
    ("train.epochs=0", r"'train.epochs' must be >= 1, got 0"),
    ("data.batch_size=0", r"'data.batch_size' must be >= 1, got 0"),
    ("data.num_workers=-1", r"'data.num_workers' must be >= 0, got -1"),
    ("train.device=gpu", r"'train.device' must be auto \| cpu \| cuda \| cuda:N \| mps, got 'gpu'"),
    ("train.optimizer=adam", r"'train.optimizer' must be one of sgd, adamw, got 'adam'; did you mean 'adamw'"),
    ("train.amp=fp8", r"'train.amp' must be one of auto, bf16, fp16, off"),
    ("train.lr=null", r"'train.lr' cannot be null; set a number \(default train.lr=0.01\)"),
    ("train.epochs=null", r"'train.epochs' cannot be null"),
    ("data.augment.hflip=1.5", r"'data.augment.hflip' must be <= 1, got 1.5"),
    ("train.betas=[0.9]", r"'train.betas' must be a list of 2 numbers, got \[0.9\]"),
    ("train.log_every=10", r"'train.log_every' no longer exists: it was never read"),
])
def test_out_of_range_and_null_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(base={"model": MODEL}, overrides=[override])


def test_out_of_range_through_the_cli_before_any_work(tmp_path, capsys):
    path = write(tmp_path / "c.yaml", "model: {name: unet}\n")
    assert cli(["train", str(path), "train.clip_grad=-1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config key 'train.clip_grad' must be > 0")
    assert not (tmp_path / "run").exists()


def test_eval_metric_is_checked_before_the_first_epoch(tmp_path, monkeypatch):
    import segzoo.engine.build as build_module

    def no_data(*args, **kwargs):
        raise AssertionError("the data was touched before eval.metric was checked")

    monkeypatch.setattr(build_module, "build_dataset", no_data)
    cfg = load_config(base={"model": MODEL, "train": {"device": "cpu"}}, overrides=["eval.metric=miuo"])
    with pytest.raises(ConfigError, match=r"eval.metric='miuo' is not a metric of semantic models; did you mean "
                                          r"'miou'\?"):
        train_from_config(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = load_config(base={"model": MODEL, "train": {"device": "cpu"}}, overrides=["eval.metric=segm_AP"])
    with pytest.raises(ConfigError, match="not a metric of semantic models"):
        train_from_config(cfg, tmp_path / "run")


BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi")
)  # nine levels of nine aliases: 9**9 (387 million) strings once expanded


@pytest.mark.timeout(120)
def test_yaml_alias_bomb_is_refused_fast_and_small(tmp_path):
    import tracemalloc

    path = write(tmp_path / "bomb.yaml", f"model: {{name: unet}}\n{BOMB}train: {{lr: *i}}\n")
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"expands to more than 100,000 values"):
            load_config(path)
        with pytest.raises(ConfigError, match=r"expands to more than"):
            load_config(base={"model": MODEL}, overrides=["data.train=" + "{" + BOMB.replace("\n", ", ") + "}"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # refused before the expansion is built


def test_yaml_depth_recursion_and_size_are_bounded(tmp_path):
    with pytest.raises(ConfigError, match="more than 32 levels deep"):
        load_config(base={"model": MODEL}, overrides=["data.train=" + "[" * 40 + "]" * 40])
    with pytest.raises(ConfigError, match="cannot be recursive"):
        load_config(write(tmp_path / "r.yaml", "model: {name: unet}\ndata: {train: &a {x: *a}}\n"))
    with pytest.raises(ConfigError, match="a config is at most"):
        load_config(write(tmp_path / "big.yaml", "model: {name: unet}\n#" + "x" * (2 << 20) + "\n"))


def test_the_written_config_loads_back_equal(tmp_path):
    from segzoo.config import dump

    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["train.clip_grad=1.0", "data.augment.size=[64, 48]"])
    saved = write(tmp_path / "config.yaml", dump(cfg))
    assert load_config(saved).replace(name=cfg.name) == cfg
