"""Nothing is dropped after the check passed without being said: what the training transforms remove is
counted and reported per epoch, and settings that remove every target are refused before training."""

import json

import pytest
import torch
from torchvision import tv_tensors

from segzoo.config import load_config
from segzoo.data import DataError
from segzoo.data.transforms import instance_transforms, pop_dropped
from segzoo.engine.run import train_from_config


def target(boxes, size=64):
    return {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY",
                                              canvas_size=(size, size)),
            "labels": torch.arange(len(boxes)), "image_id": 0}


def test_the_transforms_count_what_they_remove():
    image = tv_tensors.Image(torch.zeros(3, 64, 64, dtype=torch.uint8))
    t = instance_transforms(True, size=64, scale=(1.0, 1.0), hflip=0, color_jitter=0, min_box_size=5)
    _, out = t(image, target([[0, 0, 40, 40], [10, 10, 12, 12], [50, 50, 53, 60]]))
    assert len(out["boxes"]) == 1 and out["dropped"] == 2  # two boxes under 5 px
    dropped, kept, emptied = pop_dropped([out, {**target([]), "dropped": 0}])
    assert (dropped, kept, emptied) == (2, 1, 0) and "dropped" not in out  # models never see the count
    _, out = t(image, target([[10, 10, 12, 12]]))
    assert pop_dropped([out]) == (1, 0, 1)  # an image left with no target when it had one


def cfg(tmp_path, **augment):
    return load_config(base={
        "model": {"name": "centernet_resnet18", "num_classes": 3},
        "data": {"type": "shapes", "root": str(tmp_path / "shapes"), "batch_size": 2, "num_workers": 0,
                 "train": {"num_train": 4, "num_val": 2, "size": 64}, "val": {"num_train": 4, "num_val": 2, "size": 64},
                 "augment": {"size": 64, "hflip": 0, "color_jitter": 0, **augment}},
        "train": {"max_steps": 2, "device": "cpu", "progress": False, "tensorboard": False},
        "eval": {"every": 0, "num_pictures": 0}})


def test_a_setting_that_removes_every_target_is_an_error_before_training(tmp_path):
    with pytest.raises(DataError, match=r"removes every target.*min_box_size=1000"):
        train_from_config(cfg(tmp_path, min_box_size=1000), tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.safetensors"))


@pytest.mark.slow
def test_drops_are_reported_per_epoch(tmp_path, capsys):
    # a 40 px crop of 64 px images with min_box_size 8 drops some shapes (cut by the crop), not all
    train_from_config(cfg(tmp_path, size=40, scale=[1.0, 1.0], min_box_size=8), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    dropped = [r for r in records if r["type"] == "dropped"]
    assert dropped and dropped[0]["boxes_dropped"] > 0 and dropped[0]["epoch"] == 1
    out = capsys.readouterr().out
    assert "warning: epoch 1: the augmentation dropped" in out and "min_box_size=8" in out
