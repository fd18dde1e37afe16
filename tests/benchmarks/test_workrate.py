"""benchmarks.speed.workrate: the like-for-like work-rate measure runs and its figures are consistent."""

import pytest

from benchmarks.speed import workrate


@pytest.mark.parametrize("moving", [False, True])
def test_workrate_measures_four_variants_consistently(moving):
    r = workrate.measure("centernet_resdcn18", size=64, runs=1, moving_offsets=moving, num_classes=3)
    f, s, g = r["gflops"], r["seconds"], r["gflop_per_s"]
    assert f["model"] > f["body"] > 0  # the neck and heads add FLOPs on top of the body's
    assert set(s) == {"model eager", "body eager", "model optimized", "body optimized"} and min(s.values()) > 0
    assert g["model eager"] == pytest.approx(f["model"] / s["model eager"])
    assert r["optimized_ratio"] == pytest.approx(
        (f["model"] / s["model optimized"]) / (f["body"] / s["body optimized"]))
    for mode in ("eager", "optimized"):  # paired by round: each round's model over the body timed beside it
        m, b = r["seconds"][f"model {mode}"], r["seconds"][f"body {mode}"]  # one round: the medians are its times
        assert r["round_ratios"][mode] == [pytest.approx(f["model"] / f["body"] * b / m)]
        assert r["paired"][mode] == r["round_ratios"][mode][0]
    assert "| centernet_resdcn18 (64 px) |" in workrate.table([r])


def test_workrate_cli_prints_the_table(capsys):
    workrate.main(["--models", "centernet_resnet18", "--size", "64", "--runs", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "centernet_resnet18: eager / eager" in out and "| centernet_resnet18 (64 px) |" in out
    assert "paired by round" in out and "paired optimized (range)" in out
