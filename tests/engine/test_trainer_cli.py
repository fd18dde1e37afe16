"""`segzoo train` / `segzoo data check` end to end: refusal of bad data, run folder, transfer learning."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segzoo.checkpoint import read_safetensors
from segzoo.cli import main

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")
UNET = str(Path(__file__).resolve().parents[2] / "configs" / "unet.yaml")

QUICK = ["data.num_workers=0", "data.batch_size=2", "data.augment.size=64", "train.progress=false",
         "train.tensorboard=false", "eval.max_images=2", "eval.num_pictures=1"]


def _small_shapes(root):
    small = "{num_train: 4, num_val: 2, size: 64}"
    return [f"data.root={root}", f"data.train={small}", f"data.val={small}"]


def test_bad_data_is_refused_with_the_check_message(tmp_path, capsys):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "im" / f"{i}.png")
        m = np.zeros((16, 16), np.uint8)
        m[4:12, 4:12] = 255
        Image.fromarray(m).save(tmp_path / "gt" / f"{i}.png")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"model: {{name: unet_resnet18, num_classes: 2}}\n"
                   f"data: {{type: mask_folder, train: {{images: {tmp_path / 'im'}, masks: {tmp_path / 'gt'}}}}}\n")
    assert main(["data", "check", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "only 0 and 255" in out and "data.binary=true" in out
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), *QUICK]) == 1
    err = capsys.readouterr().err
    assert "only 0 and 255" in err and not (tmp_path / "run").exists()
    assert main(["data", "check", str(cfg), "data.binary=true"]) == 0
    assert main(["train", str(cfg), "train.epoch=1"]) == 2
    assert "did you mean 'train.epochs'" in capsys.readouterr().err


def test_train_writes_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", QUICKSTART, "--out", str(run), "train.max_steps=2", *QUICK,
            *_small_shapes(tmp_path / "shapes")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train  2 steps, adamw" in out and "best miou" in out
    assert "max_steps" not in out and f"full resolved config is written to {run / 'config.yaml'}" in out
    assert "max_steps: 2" in (run / "config.yaml").read_text()
    for name in ("model.safetensors", "train_state.pt", "log.jsonl", "metrics.json", "predictions.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["step"] == 2


def test_transfer_with_frozen_backbone(tmp_path):
    run = tmp_path / "run"
    base = ["train", UNET, "train.max_steps=2", "model.name=unet_resnet18", *QUICK, *_small_shapes(tmp_path / "shapes")]
    assert main([*base, "--out", str(run)]) == 0
    # fine-tune with another num_classes: the head is re-initialised, the frozen backbone is kept
    run2 = tmp_path / "run2"
    with pytest.warns(UserWarning, match="re-initialised the class-dependent"):
        assert main([*base, "--out", str(run2), f"model.weights={run / 'model.safetensors'}", "model.num_classes=5",
                     "train.freeze_backbone=true"]) == 0
    old, _ = read_safetensors(run / "model.safetensors")
    new, meta = read_safetensors(run2 / "model.safetensors")
    assert json.loads(meta["spec"])["num_classes"] == 5
    backbone = [k for k in new if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
    assert backbone and all(torch.equal(old[k], new[k]) for k in backbone)
    assert any(not torch.equal(old[k], new[k]) for k in new if k in old and not k.startswith("backbone."))
