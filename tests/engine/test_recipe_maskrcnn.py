"""configs/maskrcnn.yaml is a recipe a CPU can train: it loads, trains, and a step costs what its comment says."""

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from segzoo.checkpoint import read_safetensors
from segzoo.cli import main
from segzoo.config import load_config
from segzoo.engine.build import build_model, build_split
from segzoo.tasks import get_task

RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "maskrcnn.yaml")
GFLOP_BUDGET = 100  # the recipe's step is ~68 GFLOP; torchvision's sizes with ResNet-50 are ~680


def _small_shapes(root, size=64):
    small = f"{{num_train: 4, num_val: 2, size: {size}}}"
    return [f"data.root={root}", f"data.train={small}", f"data.val={small}"]


def test_recipe_trains_two_steps(tmp_path):
    out = tmp_path / "run"
    args = ["train", RECIPE, "--out", str(out), *_small_shapes(tmp_path / "shapes"), "train.max_steps=2",
            "data.num_workers=0", "data.augment.size=64", "train.progress=false", "train.tensorboard=false",
            "train.device=cpu", "eval.num_pictures=1"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    _, meta = read_safetensors(out / "model.safetensors")
    assert json.loads(meta["spec"])["kwargs"]["box_batch_size_per_image"] == 16  # the recipe's arguments are kept
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "maskrcnn_resnet18_fpn" and "segm_AP" in metrics["final"]


def test_recipe_step_is_cpu_sized(tmp_path):
    """One training step at the recipe's batch and input size stays within a CPU budget (counted
    in FLOPs, not seconds): the proposal sampling and head sizes are what decide it."""
    torch.manual_seed(0)
    cfg = load_config(RECIPE, _small_shapes(tmp_path / "shapes", size=128))
    assert cfg.data.augment.size == 128
    model = build_model(cfg).train()
    data = build_split(cfg, "train", model.task, train=False)
    images, targets = get_task(model.task).collate([data[i] for i in range(cfg.data.batch_size)])
    with FlopCounterMode(display=False) as counter:
        model(images, targets)["loss"].backward()
    assert counter.get_total_flops() / 1e9 < GFLOP_BUDGET
