"""What each process runs under torchrun in tests/engine/test_trainer_ddp.py: ``python ddp_tiny_run.py DATA OUT BATCH``.

Trains the tiny BatchNorm-free model of ``test_trainer_ddp._run`` (4 steps, seeded, with an EMA of
decay 0.5) on the Shapes data in DATA and writes the run folder OUT; the process group comes from
torchrun's environment.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_trainer_ddp import _run  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    root, out, batch_size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    try:
        _run(root, out, batch_size=batch_size, ema=True, ema_decay=0.5)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
