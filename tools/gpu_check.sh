#!/usr/bin/env bash
# Check segzoo's GPU paths on a CUDA machine, in under 8 minutes on one GPU:
#   1. the tests marked `cuda` (tests/engine/test_cuda.py): AMP bf16 and fp16 training steps with the
#      GradScaler, channels_last, torch.compile, NCCL DDP with SyncBatchNorm (2 processes; skipped
#      with fewer than 2 GPUs) and deterministic mode;
#   2. the benchmark of every model beside its anchor under bf16 autocast and channels_last.
#
#   bash tools/gpu_check.sh                          # all of it
#   bash tools/gpu_check.sh fcn_resnet50 hrnet_w48   # benchmark only these cases (shell patterns work)
#
# Results go to $GPU_CHECK_OUT (default runs/gpu_check): cuda_tests.log, benchmark.md (the markdown
# tables) and benchmark.log (progress). The exit status is non-zero when a test fails or when the
# benchmark does not finish in the time left ($GPU_CHECK_SECONDS in all, default 470).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${GPU_CHECK_OUT:-runs/gpu_check}"
budget="${GPU_CHECK_SECONDS:-470}"
mkdir -p "$out"
start=$SECONDS

python - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU machine")
names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} x {', '.join(names)}")
EOF

status=0
echo "== tests marked cuda (tests/engine/test_cuda.py)"
timeout 240 python -m pytest -m cuda -n 0 -p no:cacheprovider -q -rs --durations=10 tests 2>&1 \
    | tee "$out/cuda_tests.log" || status=$?
if [ "$status" -ne 0 ]; then
    echo "gpu_check: the cuda tests failed or timed out (status $status); see $out/cuda_tests.log" >&2
fi

left=$((budget - (SECONDS - start)))
echo "== benchmark --amp bf16 --channels-last (${left} s left)"
bench=0
if [ "$left" -lt 30 ]; then
    bench=124
else
    timeout "$left" python -m benchmarks.speed "$@" --device cuda --amp bf16 --channels-last --markdown \
        > "$out/benchmark.md" 2> >(tee "$out/benchmark.log" >&2) || bench=$?
fi
if [ "$bench" -eq 124 ]; then
    echo "gpu_check: the benchmark did not finish in the ${left} s left; name fewer cases (bash tools/gpu_check.sh" \
         "fcn_resnet50 hrnet_w18 ...) or raise GPU_CHECK_SECONDS" >&2
elif [ "$bench" -ne 0 ]; then
    echo "gpu_check: the benchmark failed (status $bench); see $out/benchmark.log" >&2
fi
[ "$bench" -eq 0 ] && cat "$out/benchmark.md"
[ "$status" -eq 0 ] && status=$bench
echo "gpu_check: $((SECONDS - start)) s in all; results in $out (status $status)"
exit "$status"
