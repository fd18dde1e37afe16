"""Determinism on CPU: two training runs with the same config and seed give bit-identical weights.

What is not deterministic on CUDA (and so not checked here): see the Trainer class docstring.
"""

import json

import pytest
import torch

from segzoo.checkpoint import read_safetensors
from segzoo.config import load_config
from segzoo.engine.run import train_from_config
from segzoo.engine.trainer import WEIGHTS_FILE

CASES = {
    # dropout (FCN head), BatchNorm, 2 data-loader workers with random augmentation
    "semantic": ({"name": "fcn_resnet50", "backbone": "resnet18", "num_classes": 4, "output_stride": 16},
                 {"num_workers": 2}),
    # random crops of boxes, focal loss; the main process loads the data
    "detection": ({"name": "centernet_resnet18", "num_classes": 3}, {"num_workers": 0}),
}


def run(root, case, out, seed):
    model, data = CASES[case]
    shapes = {"num_train": 8, "num_val": 2, "size": 48}
    cfg = load_config(base={
        "model": model,
        "data": {"type": "shapes", "root": str(root / "shapes"), "train": shapes, "val": shapes, "batch_size": 2,
                 "check": False, "augment": {"size": 40, "scale": [0.75, 1.25], "hflip": 0.5, "color_jitter": 0.2},
                 **data},
        "train": {"max_steps": 3, "lr": 0.01, "seed": seed, "device": "cpu", "progress": False,
                  "tensorboard": False},
        "eval": {"every": 0, "num_pictures": 0},
    })
    train_from_config(cfg, out)
    losses = [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["type"] == "train"]
    return read_safetensors(out / WEIGHTS_FILE)[0], losses


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_seed_gives_identical_weights(case, tmp_path):
    torch.manual_seed(123)  # the global RNG state before a run must not matter: the trainer seeds itself
    a, loss_a = run(tmp_path, case, tmp_path / "a", seed=7)
    torch.manual_seed(456)
    b, loss_b = run(tmp_path, case, tmp_path / "b", seed=7)
    assert len(loss_a) == 3 and loss_a == loss_b
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical, BatchNorm statistics included
    c, loss_c = run(tmp_path, case, tmp_path / "c", seed=8)  # and the seed matters
    assert loss_c != loss_a and any(not torch.equal(a[k], c[k]) for k in a)
