"""Every registered model, generated from the registry (as timm's tests/models/test_models.py).

For each name in ``segzoo.list_models()``, built as registered (only ``num_classes`` set):
the spec's task is the model's; a training step on a small batch gives finite losses and a
gradient to every trainable parameter (or the parameter is listed in ``NO_GRAD`` with the
reason); a save/load round trip (``segzoo.save`` / ``segzoo.load``) gives identical outputs.
Models over 40M parameters are marked ``slow`` (``-m "not slow"`` skips them).
"""

from __future__ import annotations

import pytest
import torch

import segzoo
from segzoo.backbones import Backbone
from segzoo.registry import get_entry
from segzoo.spec import TASKS

NUM_CLASSES = 3
# what a task needs besides num_classes: panoptic models split the categories into things and stuff
TASK_KWARGS = {"panoptic": {"num_stuff": 1}, "universal": {"num_stuff": 1}}
# parameters that get no gradient by design: name -> (parameter-name prefixes, why)
NO_GRAD: dict[str, tuple[tuple[str, ...], str]] = {}
# registered defaults over this many parameters are marked slow
SLOW_PARAMS = 40_000_000


def _build(name: str) -> torch.nn.Module:
    return segzoo.build(name, num_classes=NUM_CLASSES, **TASK_KWARGS.get(get_entry(name).task, {}))


def _params(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in _build(name).parameters())


def _cases() -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if _params(n) > SLOW_PARAMS else n
            for n in segzoo.list_models()]


def _targets(task: str, n: int, h: int, w: int) -> torch.Tensor | list[dict]:
    g = torch.Generator().manual_seed(1)
    if task == "semantic":
        t = torch.randint(0, NUM_CLASSES, (n, h, w), generator=g)
        t[:, :4] = 255  # some ignored pixels
        return t
    out = []
    for i in range(n):
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 44.0]]) + i
        t = {"boxes": boxes, "labels": torch.tensor([0, NUM_CLASSES - 1])}
        if task in ("panoptic", "universal"):  # a thing on one stuff segment (the last label), with a void border
            thing = torch.zeros(h, w)
            thing[6:50, 4:40] = 1
            stuff = 1 - thing
            stuff[:2] = 0
            t = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [0.0, 2.0, w, h]]),
                 "labels": torch.tensor([0, NUM_CLASSES - 1]), "masks": torch.stack([thing, stuff])}
        if task == "instance":
            masks = torch.zeros(2, h, w)
            for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
                masks[k, y1:y2, x1:x2] = 1
            t["masks"] = masks
        out.append(t)
    return out


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        return
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", _cases())
def test_model(name, tmp_path):
    torch.manual_seed(0)
    model = _build(name)

    # one task, read from the model
    assert model.task in TASKS and model.spec.task == model.task
    assert name in segzoo.list_models(task=model.task)
    assert model.spec.name == name and model.spec.num_classes == NUM_CLASSES
    if hasattr(model, "backbone"):  # every family's backbone has the one contract
        assert isinstance(model.backbone, Backbone)
        assert len(model.backbone.channels) == len(model.backbone.strides) > 0

    # a training step: finite losses, a gradient for every trainable parameter
    model.train()
    x = torch.rand(2, 3, 64, 64)
    losses = model(x, _targets(model.task, 2, 64, 64))
    assert "loss" in losses and all(torch.isfinite(v) for v in losses.values()), losses
    losses["loss"].backward()
    skip, _ = NO_GRAD.get(name, ((), ""))
    missing = [k for k, p in model.named_parameters()
               if p.requires_grad and p.grad is None and not k.startswith(skip)]
    assert not missing, f"no gradient reaches {len(missing)} parameters: {missing[:8]}"
    bad = [k for k, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:8]}"

    # save / load: the same model, the same outputs
    model.eval()
    x = torch.rand(1, 3, 64, 80)
    path = tmp_path / f"{name}.safetensors"
    segzoo.save(model, path)
    loaded = segzoo.load(path)
    assert type(loaded) is type(model) and loaded.spec == model.spec
    with torch.no_grad():
        _assert_same(loaded(x), model(x))
