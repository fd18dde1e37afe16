import pytest
import torch
from torch import nn

from benchmarks import speed as benchmark
from benchmarks.speed import Case


def _cli():
    """``python -m benchmarks.speed``'s ``main``."""
    from benchmarks.speed.main import main

    return main


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
    assert row["anchor_flops"] == row["flops"]  # the anchor is counted too (the same net here)
    table = benchmark.format_table([row], markdown=True, peak_gflops=10.0)
    lines = table.splitlines()
    assert lines[0].startswith("| model |") and "| tiny | infer | 2x3x32x32 |" in lines[2]
    assert len(lines[2].split("|")) == len(lines[0].split("|"))


def test_table_shows_the_anchors_work_rate():
    row = {"name": "m", "mode": "infer", "size": "1x3x64x64", "anchor": "body", "params": 10, "flops": 4e9,
           "segzoo_s": 0.1, "anchor_flops": 1e9, "anchor_s": 0.02, "ratio": 5.0}
    cells = [c.strip() for c in benchmark.format_table([row], markdown=True).splitlines()[2].split("|")]
    assert cells[-3:-1] == ["50", "0.80"]  # body: 1 GFLOP in 0.02 s; segzoo's 40 GFLOP/s is 0.80 of it


def test_registered_cases_exist():
    names = benchmark.list_cases()
    assert "fcn_resnet50" in names


def test_every_registered_model_has_a_case():
    import segzoo

    missing = set(segzoo.list_models()) - set(benchmark.list_cases())
    assert not missing, f"no benchmark case for {sorted(missing)}"


def test_cli_list_names_every_model(capsys):
    import segzoo
    main = _cli()

    assert main(["--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert set(segzoo.list_models()) <= set(listed)


class Recorder(nn.Module):
    def __init__(self, tag, log):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.tag, self.log = tag, log

    def forward(self, x):
        self.log.append(self.tag)
        return self.conv(x)


def test_segzoo_and_anchor_calls_alternate():
    log = []
    case = Case(name="rec", build=lambda: Recorder("s", log), anchor=lambda: Recorder("a", log), anchor_name="rec",
                make_input=lambda d: torch.rand(1, 3, 16, 16, device=d), size="1x3x16x16")
    row = benchmark.run_case(case, torch.device("cpu"), warmup=1, runs=3)
    # first call of each (segzoo's under the FLOP counter), then 3 alternating timed runs;
    # peak memory comes from the last run, with no extra call
    assert "".join(log) == "sa" + "sa" * 3
    assert "segzoo_mem" in row and "anchor_mem" in row and row["flops"] == 2 * 16 * 16 * 3 * 2


def test_runs_chosen_by_speed():
    assert benchmark.auto_runs(3.0) == (0, 3)
    assert benchmark.auto_runs(0.5) == (0, 5)
    assert benchmark.auto_runs(0.01) == (1, 7)
    log = []
    (fast,), (peak,) = benchmark.time_interleaved([lambda: log.append(0)], torch.device("cpu"))
    assert fast >= 0 and peak is None and len(log) == 1 + 1 + 7  # first call, one more warm-up, 7 runs


def test_failed_case_keeps_its_row():
    def broken():
        raise RuntimeError("boom")

    case = Case(name="broken", build=broken, make_input=lambda d: torch.rand(1, 3, 8, 8), size="1x3x8x8")
    rows = benchmark._run_cases([case], torch.device("cpu"), 1, 1, False, None)
    assert rows[0]["error"] == "RuntimeError: boom"
    assert "failed: RuntimeError: boom" in benchmark.format_table(rows, markdown=True)


def _row(name, size, series, x, seconds, anchor_seconds):
    return {"name": name, "mode": "infer", "size": size, "anchor": "ref", "series": series, "x": x,
            "segzoo_s": seconds, "anchor_s": anchor_seconds, "ratio": seconds / anchor_seconds, "segzoo_mem": 2**20}


def test_scaling_tables_show_per_unit_and_marginal_cost():
    rows = [_row("m", "1x3x800x800", "detections kept", k, 1.0 + 0.01 * k, 2.0 + 0.02 * k) for k in (100, 300, 1000)]
    rows += [_row("f", f"1x3x{s}x{s}", "input side", s, s * s / 1e6, s * s / 2e6) for s in (256, 512)]
    text = benchmark.format_scaling(rows, markdown=True)
    det = text.split("### Scaling over input side")[0].splitlines()
    assert det[0] == "### Scaling over detections kept"
    # 1000 detections: 11 s = 11 ms/det; marginal (11000 - 4000) / 700 = 10 ms per added detection
    assert "| m | 1x3x800x800 | 1000 | 11000.0 | 11.00 | 10.00 | 1 | ref | 22000.0 | 22.00 | 20.00 | 0.50 |" in det
    assert "| m | 1x3x800x800 | 100 | 2000.0 | 20.00 | - |" in text
    # linear in pixels: 1 s per megapixel at both sides, and so is the marginal cost
    assert "| f | 1x3x512x512 | 512 | 262.1 | 1000.00 | 1000.00 |" in text


def test_readme_section_replaced_atomically(tmp_path):
    from benchmarks.speed import report

    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- benchmark:start -->\nold table\n<!-- benchmark:end -->\n\nafter\n")
    report.replace_section(readme, "new table\n")
    assert readme.read_text() == "# title\n\n<!-- benchmark:start -->\nnew table\n<!-- benchmark:end -->\n\nafter\n"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary left behind
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="add the two lines"):
        report.replace_section(readme, "x")
    assert readme.read_text() == "# no markers\n"


def test_markdown_report_has_machine_date_peak_and_tables():
    import datetime

    from benchmarks.speed import report

    row = {"name": "m", "mode": "infer", "size": "1x3x64x64", "anchor": "", "params": 10, "flops": 2e9,
           "segzoo_s": 0.1, "segzoo_mem": None}
    scaling = [_row("m", "1x3x256x256", "input side", 256, 0.5, 1.0)]
    text = report.markdown_report([row], scaling, peak_gflops=100.0, date=datetime.date(2026, 11, 22))
    assert report.cpu_model() in text and torch.__version__ in text and "2026-11-22" in text
    assert "peak 100 GFLOP/s" in text and "| m | infer | 1x3x64x64 |" in text and "### Scaling over input side" in text
    assert "| 20 | 20% |" in text  # 2 GFLOP in 0.1 s = 20 GFLOP/s, 20 % of the measured peak


def test_scaling_series_cover_the_subset_and_detections():
    cases = benchmark.scaling_cases()
    sides = {(c.name, c.extra["x"]) for c in cases if c.extra["series"] == "input side"}
    assert sides == {(n, s) for n in benchmark.SCALING_CASES for s in benchmark.SCALING_SIDES}
    dets = [c.extra["x"] for c in cases if c.extra["series"] == "detections kept"]
    assert dets == [100, 300, 1000]


def test_cli_writes_readme(tmp_path):
    main = _cli()

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- benchmark:start -->\n<!-- benchmark:end -->\n")
    # an anchor from a required dependency (torchvision): runs on a fresh `pip install -e ".[dev]"`
    assert main(["deeplabv3_mobilenetv3_large", "--size", "64", "--warmup", "1", "--runs", "1", "--no-peak",
                 "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- benchmark:start -->\nMeasured on ")
    assert "| deeplabv3_mobilenetv3_large | infer | 1x3x64x64 |" in text
    assert "torchvision deeplabv3_mobilenet_v3_large" in text
    bad = tmp_path / "other.md"
    bad.write_text("nothing\n")
    with pytest.raises(SystemExit):
        main(["unet_resnet18", "--readme", str(bad)])


def test_smp_anchor_row(tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the smp anchor needs the bench extra")
    main = _cli()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- benchmark:start -->\n<!-- benchmark:end -->\n")
    assert main(["unet_resnet18", "--size", "64", "--warmup", "1", "--runs", "1", "--no-peak",
                 "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| unet_resnet18 | infer | 1x3x64x64 |" in text and "smp Unet(resnet18)" in text


def test_scaling_reuses_main_table_rows(monkeypatch):
    timed = []
    monkeypatch.setattr(benchmark, "_run_cases", lambda cases, *a: timed.extend(cases) or [])
    main = {"name": "fcn_resnet50", "mode": "infer", "size": "1x3x512x512", "anchor": "torchvision fcn_resnet50",
            "segzoo_s": 1.0}
    rows = benchmark.run_scaling(["fcn_resnet50"], "cpu", reuse=[main])
    assert [r["x"] for r in rows] == [512] and rows[0]["segzoo_s"] == 1.0 and rows[0]["series"] == "input side"
    assert [c.extra["x"] for c in timed] == [256, 768, 1024]


def test_detections_series_reuses_only_the_100_detections_point(monkeypatch):
    timed = []
    monkeypatch.setattr(benchmark, "_run_cases", lambda cases, *a: timed.extend(cases) or [])
    name = "maskrcnn_resnet50_fpn"
    main = {"name": name, "mode": "infer", "size": "1x3x800x800", "anchor": f"torchvision {name}", "segzoo_s": 4.0}
    rows = benchmark.run_scaling([f"{name} detections"], "cpu", reuse=[main])
    assert [r["x"] for r in rows] == [100]
    assert [c.extra["x"] for c in timed] == [300, 1000]  # another detections_per_img: timed, not copied


class _Probe(torch.nn.Module):
    """Records how it was called: input memory format and autocast."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.seen = []

    def forward(self, x):
        self.seen.append((x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                          torch.is_autocast_enabled("cpu")))
        return self.conv(x)


@pytest.mark.parametrize("options,expected", [
    (benchmark.Options(), (False, False)),
    (benchmark.Options(amp="bf16", channels_last=True), (True, True)),
])
def test_options_apply_to_both_sides(options, expected):
    ours, anchor = _Probe(), _Probe()
    case = Case(name="probe", build=lambda: ours, anchor=lambda: anchor, anchor_name="probe",
                make_input=lambda device: torch.rand(1, 3, 8, 8), size="1x3x8x8")
    row = benchmark.run_case(case, torch.device("cpu"), warmup=1, runs=2, flops=False, options=options)
    assert "ratio" in row
    assert set(ours.seen) == set(anchor.seen) == {expected}


def test_compile_option_compiles_both_sides():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    case = Case(name="probe", build=lambda: nn.Conv2d(3, 4, 3), anchor=lambda: nn.Conv2d(3, 5, 3),
                anchor_name="probe", make_input=lambda device: torch.rand(1, 3, 8, 8), size="1x3x8x8")
    benchmark.run_case(case, torch.device("cpu"), warmup=1, runs=1, flops=False,
                       options=benchmark.Options(compile=backend))
    assert len(graphs) >= 2  # one graph per model


def test_bad_amp_option_is_rejected():
    with pytest.raises(ValueError, match="amp"):
        benchmark.Options(amp="int8")
