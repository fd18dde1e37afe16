"""The config options the published recipes need: step decay at milestones (epochs or steps),
weight decay on norms and biases, and the augmentation options of the semantic and detection presets."""

import dataclasses

import pytest
import torch
from torch import nn

from segzoo.config import ConfigError, load_config
from segzoo.data import build_transforms
from segzoo.data.targets import BOXES, CLASS_MAP
from segzoo.engine.build import build_trainer
from segzoo.engine.optim import build_scheduler, lr_factor, param_groups
from tests.conftest import build_small


def test_step_schedule_with_warmup_equals_torchvisions_reference():
    # torchvision references: MultiStepLR(milestones, gamma) times a linear warmup over the first iterations
    steps, warmup, factor = 100, 10, 0.001
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=factor, total_iters=warmup)
    multi = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 80], gamma=0.1)
    ref = []
    for _ in range(steps):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        warm.step()
        multi.step()
    got = [0.02 * lr_factor(s, steps, "step", warmup_steps=warmup, warmup_factor=factor, milestones=(60, 80),
                            gamma=0.1) for s in range(steps)]
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_step_schedule_needs_increasing_milestones():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="milestones"):
        build_scheduler(opt, 100, "step")
    with pytest.raises(ValueError, match="increase"):
        build_scheduler(opt, 100, "step", milestones=(50, 20))
    with pytest.raises(ConfigError, match="milestone_unit"):
        load_config(None, ["train.milestone_unit=iter"], require_model=False)


def test_trainer_turns_epoch_milestones_into_steps(tmp_path):
    model = build_small("unet", num_classes=2, channels=[8, 16])
    data = [(torch.rand(3, 32, 32), torch.zeros(32, 32, dtype=torch.long))] * 8
    cfg = load_config(None, ["train.schedule=step", "train.milestones=[2, 3]", "train.epochs=4", "data.batch_size=2",
                             "train.device=cpu", "train.progress=false"], require_model=False)
    trainer = build_trainer(model, data, None, cfg, tmp_path)
    assert trainer.steps_per_epoch == 4 and trainer.parts.plan.milestones == (8, 12)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, milestone_unit="step"))
    assert build_trainer(model, data, None, cfg, tmp_path).parts.plan.milestones == (2, 3)


def test_norm_bias_decay_decays_every_parameter():
    model = build_small("unet", num_classes=2, channels=[8, 16])
    default = {g["name"]: g["weight_decay"] for g in param_groups(model, 5e-4)}
    assert default["head_no_decay"] == 0.0
    everything = param_groups(model, 5e-4, norm_bias_decay=True)
    assert {g["weight_decay"] for g in everything} == {5e-4}
    assert sum(len(g["params"]) for g in everything) == sum(1 for p in model.parameters() if p.requires_grad)


def test_augment_options_reach_the_presets():
    cfg = load_config(None, ["data.augment.crop=[16, 24]", "data.augment.base_size=48", "data.augment.scale=[1.0, 1.0]",
                             "data.augment.photometric=true", "data.augment.cat_max_ratio=0.75"], require_model=False)
    tf = build_transforms(CLASS_MAP, True, **cfg.data.augment.to_dict())
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.rand(3, 40, 48))
    mask = tv_tensors.Mask(torch.zeros(40, 48, dtype=torch.long))
    out_image, out_mask = tf(image, mask)
    assert tuple(out_image.shape[-2:]) == (16, 24) and tuple(out_mask.shape[-2:]) == (16, 24)
    # CenterNet: training crops to size; eval letterboxes, or keeps the resolution with keep_res
    det = load_config(None, ["data.augment.size=64", "data.augment.affine=true", "data.augment.pca_lighting=0.1"],
                      require_model=False).data.augment.to_dict()
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[4.0, 4.0, 20.0, 20.0]]), format="XYXY", canvas_size=(40, 48))
    target = {"boxes": boxes, "labels": torch.tensor([0])}
    assert build_transforms(BOXES, True, **det)(image, target)[0].shape[-2:] == (64, 64)
    assert build_transforms(BOXES, False, **det)(image, target)[0].shape[-2:] == (64, 64)
    kept = build_transforms(BOXES, False, **{**det, "keep_res": True})(image, target)[0]
    assert kept.shape[-2:] == (40, 48)
    # detectron2's multi-scale training: the shorter side is one of the choices
    rs = load_config(None, ["data.augment.resize_short=[24, 32]", "data.augment.max_size=100"],
                     require_model=False).data.augment.to_dict()
    assert min(build_transforms(BOXES, True, **rs)(image, target)[0].shape[-2:]) in (24, 32)
    assert min(build_transforms(BOXES, False, **rs)(image, target)[0].shape[-2:]) == 32


def test_recipe_options_of_the_other_task_are_refused_when_set():
    with pytest.raises(ValueError, match="semantic models only"):
        build_transforms(BOXES, True, photometric=True)
    with pytest.raises(ValueError, match="detection and instance models only"):
        build_transforms(CLASS_MAP, True, affine=True)
