"""Device-to-host syncs in the detection paths, counted.

Every Python-level way to read a tensor's value on the host is spied on: ``.item()``,
``.tolist()``, ``int()``/``float()``/``bool()``/``operator.index()`` on a tensor
(``__int__``, ``__float__``, ``__bool__``, ``__index__``) and ``nonzero``. Inference may sync
only where a size must become a Python int: splitting the flat detections into one dict
per image (``split_sizes``, once per pooling stage of Mask R-CNN and once at the end),
CenterNet's per-image counts and Panoptic FPN's counts and segment table. Target checks cost
one sync per batch, whatever its size.
"""

from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import build_small

SYNC_METHODS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__", "nonzero")


@pytest.fixture
def syncs(monkeypatch) -> list[str]:
    """Records ``"<method> in <calling function>"`` for every host read of a tensor's value."""
    calls: list[str] = []

    def spy(name, real):
        def method(self, *args, **kwargs):
            calls.append(f"{name} in {sys._getframe(1).f_code.co_name}")
            return real(self, *args, **kwargs)

        return method

    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "nonzero", spy("torch.nonzero", torch.nonzero))
    return calls


def _model(name: str) -> torch.nn.Module:
    extra = {"num_stuff": 1} if name.startswith("panoptic") else {}
    model = build_small(name, num_classes=3, **extra).eval()
    model.check_inputs = False  # the value check's one sync is opt-out and tested on its own
    return model


# the syncs each inference path may make, by calling function
ALLOWED = {
    "maskrcnn_resnet50_fpn": ["tolist in split_sizes"] * 3,  # box pooler, mask pooler, per-image split
    "fasterrcnn_resnet50_fpn": ["tolist in split_sizes"] * 2,  # box pooler, per-image split
    "centernet_resnet18": ["tolist in postprocess"],  # detections per image
    # box pooler, mask pooler; then in forward: the detection counts (a device sync), and the segment
    # table, copied to the host once with .cpu() and read there (two tolist on a CPU tensor)
    "panoptic_fpn_resnet18": ["tolist in split_sizes"] * 2 + ["tolist in forward"] * 3,
}


@pytest.mark.parametrize("name", list(ALLOWED))
@pytest.mark.parametrize("batch", ["tensor", "list"])
def test_inference_syncs_only_to_split(name, batch, syncs):
    model = _model(name)
    images = torch.rand(2, 3, 64, 96)
    if batch == "list":
        images = [images[0], images[1, :, :48, :80]]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    assert syncs == ALLOWED[name]


def test_the_spy_sees_every_kind_of_sync(syncs):
    t = torch.tensor([1.0, 2.0])
    t.sum().item()
    t.tolist()
    int(t[0])
    float(t[0])
    bool(t[0])
    [0, 1][t.long()[0]]
    t.nonzero()
    torch.nonzero(t)
    assert [c.split()[0] for c in syncs] == ["item", "tolist", "__int__", "__float__", "__bool__", "__index__",
                                             "nonzero", "torch.nonzero"]


@pytest.mark.parametrize("name", ["maskrcnn_resnet50_fpn", "centernet_resnet18"])
def test_target_check_is_one_sync_per_batch(name, syncs):
    model = _model(name)
    shapes = [(64, 96), (48, 80), (64, 64)]
    targets = []
    for h, w in shapes:
        boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [10.0, 5.0, 60.0, 44.0], [-5.0, 0.0, 20.0, 90.0]])
        t = {"boxes": boxes, "labels": torch.tensor([0, 2, 1])}
        if model.task == "instance":
            t["masks"] = torch.zeros(3, h, w)
        targets.append(t)
    checked = model.check_targets(targets, shapes, need_masks=model.task == "instance")
    assert syncs == ["__bool__ in check_targets"]
    assert checked[1]["boxes"][2].tolist() == [0.0, 0.0, 20.0, 48.0]  # clipped to its 48 x 80 image
    syncs.clear()
    targets[2]["labels"] = torch.tensor([0, 3, 1])
    with pytest.raises(ValueError, match=r"targets\[2\] has label 3"):
        model.check_targets(targets, shapes, need_masks=model.task == "instance")
