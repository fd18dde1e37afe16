"""benchmarks.speed.scaling: the plan, the flagging rule, the skip bound and a tiny real run."""

import json

import pytest

from benchmarks.speed import scaling


def _row(fam, side, batch, s, mb):
    return {"family": fam, "model": "m", "side": side, "batch": batch, "s_per_image": s, "peak_mb": mb,
            "series": ",".join(scaling.series_of({"side": side, "batch": batch}))}


def test_plan_measures_a_shared_point_once_and_runs_the_big_group_last():
    pts = scaling.plan(["fcn", "unet"], sides=(256, 2048), batches=(1, 2), batch_sides=(256,))
    keys = [(p["family"], p["side"], p["batch"]) for p in pts]
    assert len(keys) == len(set(keys)) == 6  # (256, 1) is in both series
    assert [k[1] for k in keys[-2:]] == [2048, 2048]  # every family's small points before any 2048 one


def test_flags_time_per_pixel_and_memory_per_image_steps_over_the_factor():
    rows = [
        _row("a", 64, 1, 1.0, 100.0),
        _row("a", 128, 1, 4.0 * 1.2, 400.0),  # time per pixel x1.2: linear enough
        _row("a", 256, 1, 4.8 * 4 * 1.5, 1600.0),  # time per pixel x1.5: flagged
        _row("a", 64, 2, 1.0, 300.0),  # memory per image 100 -> 150: x1.5, flagged; time per image flat
        _row("b", 64, 1, 1.0, 1.0),
        _row("b", 128, 1, 4.0, 20.0),  # memory x5 but under MIN_MB: allocator noise, not flagged
    ]
    flags = scaling.super_linear(rows)
    got = {(f["family"], f["series"], f["from"], f["to"], f["metric"]) for f in flags}
    assert got == {("a", "side", 128, 256, "time"), ("a", "batch@64", 1, 2, "memory")}
    assert next(f["ratio"] for f in flags if f["metric"] == "time") == 1.5
    assert scaling.super_linear(rows, factor=1.6) == []


def test_skip_reason_extrapolates_from_the_largest_measured_point():
    rows = [{**_row("a", 256, 1, 2.0, 100.0), "dense": False}]
    assert scaling.skip_reason({"family": "a", "side": 512, "batch": 1}, rows, 1000, 100) is None  # 8 s, 400 MiB
    assert "--max-seconds" in scaling.skip_reason({"family": "a", "side": 2048, "batch": 1}, rows, 1e9, 100)
    assert "--max-mb" in scaling.skip_reason({"family": "a", "side": 1024, "batch": 1}, rows, 1000, 1e9)
    tiled = [{**rows[0], "dense": True}]  # semantic above the auto-tile bound: one tile's memory, not the image's
    assert scaling.skip_reason({"family": "a", "side": 2048, "batch": 1}, tiled, 3000, 1e9) is None


@pytest.mark.slow  # two child processes that import torch and build a model: about 40 s on a shared core
def test_tiny_run_writes_rows_and_a_table_and_confirms_a_step_in_turns(tmp_path):
    out = tmp_path / "rows.jsonl"
    rows = scaling.run(["segformer"], sides=(64, 128), batches=(1, 2), batch_sides=(64,), out=str(out),
                       progress=lambda s: None)
    assert [(r["side"], r["batch"]) for r in rows] == [(64, 1), (64, 2), (128, 1)]
    for r in rows:
        assert r["model"] == "segformer_b0" and r["s_per_image"] > 0 and r["peak_mb"] >= 0
        assert r["tiled"] is False and r["detections"] is None
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    table = scaling.format_table(rows, scaling.super_linear(rows)).splitlines()
    assert table[0] == "| family | model | 64 px | 128 px | 64 px x2 |"
    assert table[2].startswith("| segformer | segformer_b0 | ") and len(table[2].split("|")) == len(table[0].split("|"))
    again = scaling.run(["segformer"], sides=(64, 128), batches=(1, 2), batch_sides=(64,), out=str(out),
                        progress=lambda s: None)
    assert again == rows  # the points in --out are kept, not measured again
    flag = {"family": "segformer", "series": "side", "from": 64, "to": 128, "metric": "time", "ratio": 9.0}
    (got,) = scaling.confirm(rows, [flag], rounds=1, factor=100.0, progress=lambda s: None)
    assert got["confirmed"] is False and got["confirmed_ratio"] > 0 and len(got["runs"]) == 2
    assert "re-timed in turns" in scaling.format_table(rows, [got])
