"""benchmarks.trainer_overhead: both sides train the same batches, and the report has the figures."""

from __future__ import annotations

import copy

import torch

import segzoo
from benchmarks import trainer_overhead as bench


def test_both_sides_take_steps_on_the_same_items(tmp_path):
    torch.manual_seed(0)
    base = segzoo.build("unet", num_classes=4, channels=[4, 8])
    items = bench.shapes_items(8, 32)
    assert items[0][0].shape == (3, 32, 32) and items[0][1].dtype == torch.long and 0.0 <= items[0][0].min()
    seg = bench.segzoo_steps(copy.deepcopy(base), items, 4, 2, 1e-3, tmp_path / "run")
    bare = bench.bare_steps(copy.deepcopy(base), items, 4, 2, 1e-3)
    assert len(seg) == len(bare) == 3  # intervals between 4 optimizer steps, each (wall, CPU) seconds
    assert all(wall > 0 and cpu > 0 for wall, cpu in seg + bare)


def test_report(capsys, monkeypatch):
    real = segzoo.build
    monkeypatch.setattr(segzoo, "build", lambda name, **kw: real("unet", channels=[4, 8], **kw))
    assert bench.main(["--model", "unet", "--size", "32", "--batch-size", "2", "--steps", "5", "--skip", "1",
                       "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "overhead" in out and "bare loop" in out and out.count("loader alone") == 2
