"""tools/gpu_check.sh on a machine without a GPU: the script parses, refuses plainly, and its benchmark
line runs on CPU (the GPU run itself is tests/engine/test_cuda.py plus the benchmark, on a CUDA machine)."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.sh"


def test_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run the script itself")
def test_script_refuses_a_machine_without_cuda(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GPU_CHECK_OUT": str(tmp_path)})
    assert proc.returncode != 0 and "no CUDA device is visible" in proc.stderr, proc.stdout + proc.stderr


def test_benchmark_line_runs_on_cpu(capsys):
    """The script's benchmark flags (``--amp bf16 --channels-last --markdown``), on a tiny CPU case."""
    line = next(raw for raw in SCRIPT.read_text().splitlines() if "-m benchmarks.speed" in raw)
    flags = [w for w in shlex.split(line.split("-m benchmarks.speed", 1)[1].rstrip(" \\")) if w.startswith("--")]
    assert flags == ["--device", "--amp", "--channels-last", "--markdown"]
    values = re.findall(r"--amp (\w+)", line)
    from benchmarks.speed.main import main

    assert main(["deeplabv3_mobilenetv3_large", "--size", "64", "--warmup", "1", "--runs", "1", "--no-peak",
                 "--device", "cpu", "--amp", *values, "--channels-last", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "both sides run autocast bf16, channels_last" in out
    assert "| deeplabv3_mobilenetv3_large | infer | 1x3x64x64 |" in out
