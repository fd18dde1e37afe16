"""A run folder's checkpoint, as detectron2's ``Checkpointer`` beside its trainer: the loop decides when,
this module writes and reads the files.

A checkpoint is ``model.safetensors`` (the weights, the spec and the step in the header),
``ema.safetensors`` (with ``train.ema``) and ``train_state.pt`` (optimizer, scheduler, scaler,
step, RNG, the loop's counters). They are written in full before any replaces its previous
version, and read back only when they belong to the same step and to a run planned as this one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from segzoo.checkpoint import atomic_write_all, encode_state_dict, read_safetensors
from segzoo.engine.run_folder import EMA_FILE, STATE_FILE, WEIGHTS_FILE

__all__ = ["Checkpointer"]


class Checkpointer:
    """Writes and reads the checkpoint of the run folder ``out_dir``."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    @property
    def weights_path(self) -> Path:
        return self.out_dir / WEIGHTS_FILE

    def save(self, weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None, state: dict[str, Any],
             metadata: dict[str, str]) -> None:
        """Write the weights (and EMA weights) with ``metadata`` in their headers, and the training state."""
        files = {self.out_dir / WEIGHTS_FILE: encode_state_dict(weights, metadata)}
        if ema is not None:
            files[self.out_dir / EMA_FILE] = encode_state_dict(ema, metadata)
        buf = io.BytesIO()
        torch.save(state, buf)
        # both files are written in full before either replaces its previous version: a kill
        # or a full disk mid-save leaves the last (weights, state) pair for --resume
        files[self.out_dir / STATE_FILE] = buf.getvalue()
        atomic_write_all(files)

    def load(self, world_size: int, total_steps: int, ema: bool) -> tuple[dict, dict | None, dict[str, Any]]:
        """``(weights, EMA weights or None, training state)``, once the files are known to make an exact resume:
        of one step, saved with ``world_size`` processes for ``total_steps`` steps, with the EMA on when ``ema``."""
        state_path, weights_path = self.out_dir / STATE_FILE, self.out_dir / WEIGHTS_FILE
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        weights, meta = read_safetensors(weights_path)
        if int(meta.get("step", -1)) != state["step"]:
            raise ValueError(f"{weights_path} is at step {meta.get('step')} but {state_path} at step "
                             f"{state['step']}: the run was cut off between the two writes; resume is unsafe")
        if state["world_size"] != world_size:
            raise ValueError(f"the run was saved with {state['world_size']} processes but this one has "
                             f"{world_size}; resume with the same number of processes")
        if state["total_steps"] != total_steps:
            raise ValueError(f"the run was planned for {state['total_steps']} steps but this config gives "
                             f"{total_steps}; keep train.epochs/max_steps/batch_size as they were")
        return weights, self._load_ema(state, ema), state

    def _load_ema(self, state: dict, ema: bool) -> dict | None:
        """The EMA weights of a resumed run (checked before anything is loaded)."""
        saved = state.get("ema_updates")
        if (saved is not None) != ema:
            was, now = ("on", "off") if saved is not None else ("off", "on")
            raise ValueError(f"the run was saved with train.ema {was} but this config has it {now}; resume with "
                             f"train.ema={'true' if saved is not None else 'false'} (the EMA continues with the run)")
        if not ema:
            return None
        path = self.out_dir / EMA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: the run uses train.ema but {path} is missing")
        weights, meta = read_safetensors(path)
        if int(meta.get("step", -1)) != state["step"]:
            raise ValueError(f"{path} is at step {meta.get('step')} but the training state at step {state['step']}: "
                             "the run was cut off between writes; resume is unsafe")
        return weights
