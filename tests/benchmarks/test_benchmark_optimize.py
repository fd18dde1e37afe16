"""python -m benchmarks.speed --optimize: eager and anchor under no_grad beside segzoo.optimize and segzoo.quantize."""

from __future__ import annotations

import pytest
import torch

import segzoo
from benchmarks import speed as benchmark
from benchmarks.speed import Case


def _unet():
    return segzoo.build("unet", num_classes=2, channels=(4, 8, 16, 32, 64))


class _GradProbe(torch.nn.Module):
    """Records whether it ran under no_grad (and not inference mode), as an anchor's README runs it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.seen = []

    def forward(self, x):
        self.seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled(), self.training))
        return self.conv(x)


@pytest.mark.parametrize("int8", [False, pytest.param(True, marks=pytest.mark.slow)])  # int8 compiles: ~30 s
def test_optimize_columns_in_one_run(int8):
    anchor = _GradProbe()
    case = Case(name="unet", build=_unet, anchor=lambda: anchor, anchor_name="probe",
                make_input=lambda device: torch.rand(1, 3, 64, 64), size="1x3x64x64")
    row = benchmark.run_case(case, torch.device("cpu"), warmup=1, runs=2, flops=False,
                             options=benchmark.Options(optimize=True, int8=int8))
    assert set(anchor.seen) == {(False, False, False)}  # eval + no_grad, not inference mode
    assert row["segzoo_s"] > 0 and row["anchor_s"] > 0 and row["optimized_s"] > 0
    assert "conv-bn folded" in row["optimized"]
    assert ("int8_s" in row) == int8
    table = benchmark.format_optimized([row], markdown=True)
    lines = table.splitlines()
    assert "optimized/anchor" in lines[0] and lines[2].startswith("| unet | 1x3x64x64 | probe |")
    assert f"{row['optimized_s'] / row['anchor_s']:.2f}" in lines[2]
    assert len(lines[2].split("|")) == len(lines[0].split("|"))


def test_optimized_table_shows_work_rate_against_the_anchor():
    row = {"name": "m", "size": "1x3x8x8", "anchor": "body", "anchor_s": 0.02, "segzoo_s": 0.1, "optimized_s": 0.05,
           "flops": 4e9, "anchor_flops": 1e9}
    cells = [c.strip() for c in benchmark.format_optimized([row], markdown=True).splitlines()[2].split("|")]
    assert cells[-3:-1] == ["0.80", "1.60"]  # 40 and 80 GFLOP/s against the body's 50


def test_optimize_excludes_the_options_it_compares_against():
    with pytest.raises(ValueError, match="excludes amp"):
        benchmark.Options(optimize=True, channels_last=True)
    assert "segzoo.optimize" in benchmark.Options(optimize=True, int8=False).describe()
