"""The accuracy cost of int8 and bf16 (the same as `python -m benchmarks.int8_accuracy`; see --help).

    python -m benchmarks.int8_accuracy runs/quickstart/best.safetensors --data configs/quickstart.yaml --threads 1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's benchmarks/ package
from benchmarks.int8_accuracy import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
