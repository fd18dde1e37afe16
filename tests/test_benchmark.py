import torch
from torch import nn

from segzoo import benchmark
from segzoo.benchmark import Case


def tiny():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))


def test_run_case_reports_ratio_flops_memory_and_table():
    case = Case(name="tiny", build=tiny, anchor=tiny, anchor_name="tiny ref",
                make_input=lambda d: torch.rand(2, 3, 32, 32, device=d), size="2x3x32x32")
    row = benchmark.run_case(case, torch.device("cpu"), warmup=1, runs=2)
    assert row["params"] == 3 * 8 * 9 + 8 + 8 * 2 + 2
    # 2 * N * Cout * Cin * k * k * H * W for both convs
    assert row["flops"] == 2 * 2 * 32 * 32 * (8 * 3 * 9 + 2 * 8)
    assert row["segzoo_s"] > 0 and row["anchor_s"] > 0
    assert abs(row["ratio"] - row["segzoo_s"] / row["anchor_s"]) < 1e-12
    table = benchmark.format_table([row], markdown=True, peak_gflops=10.0)
    lines = table.splitlines()
    assert lines[0].startswith("| model |") and "| tiny | infer | 2x3x32x32 |" in lines[2]
    assert len(lines[2].split("|")) == len(lines[0].split("|"))


def test_registered_cases_exist():
    names = benchmark.list_cases()
    assert "fcn_resnet50" in names
