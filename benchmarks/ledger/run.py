"""One ledger run: a case and a seed; the segzoo side through segzoo's Trainer, the peer through a plain loop.

Both sides see the same batches: the peer's loop draws them with the trainer's sampler and
per-item seeding (:class:`~segzoo.data.samplers.ShardSampler`,
:class:`~segzoo.data.samplers.SeededDataset`), and each side hashes every item it is given,
so a run says whether the two streams were identical instead of assuming it. The optimizer and
schedule are built from the same config with segzoo's builders (same parameter groups: no
weight decay on norms and biases). Both sides are scored by :func:`segzoo.engine.evaluate`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_iou

from segzoo.config import RunConfig, parse_config
from segzoo.data import build_dataset
from segzoo.data.samplers import SeededDataset, ShardSampler
from segzoo.engine import build_trainer, evaluate
from segzoo.engine.optim import build_optimizer, build_scheduler
from segzoo.engine.run_folder import LOG_FILE
from segzoo.tasks import get_task

from .cases import Case
from .peers import PeerAdapter, load_torchvision_rcnn


class Recorder(Dataset):
    """A dataset that hashes every item it hands out (in order), to prove two loops saw the same data."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.hash = hashlib.sha256()
        self.count = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # classes, object_classes, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        self.hash.update(image.numpy().tobytes())
        parts = target.values() if isinstance(target, dict) else [target]
        for t in parts:
            if isinstance(t, torch.Tensor):
                self.hash.update(t.numpy().tobytes())
        self.count += 1
        return image, target

    def digest(self) -> str:
        return f"{self.count} items, sha256 {self.hash.hexdigest()[:16]}"


def make_config(case: Case, seed: int, steps: int, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The case's recipe with ``train.seed`` and ``train.max_steps`` set (and any ``{"section.key": value}``)."""
    recipe = json.loads(json.dumps(case.recipe))  # a deep copy
    # one checkpoint at the end: 12 tiles in batches of 4 would otherwise save the full state every 3 steps
    recipe["train"].update(seed=seed, max_steps=steps, checkpoint_every=steps)
    for key, value in (overrides or {}).items():
        section, name = key.split(".", 1)
        recipe[section][name] = value
    return parse_config({"model": {"name": case.model.split()[0]}, **recipe}, name=case.name)


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- the two sides
def train_segzoo(model: nn.Module, train_set, cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Train with :class:`segzoo.engine.Trainer` (checkpoints in ``out_dir``); the time of its checkpoint
    writes is measured on the side (the peer's loop writes none)."""
    data = Recorder(train_set)
    trainer = build_trainer(model, data, None, cfg, out_dir, classes=getattr(train_set, "classes", None))
    saving = [0.0]
    save = trainer.save_checkpoint

    def timed_save() -> None:
        t0 = time.perf_counter()
        save()
        saving[0] += time.perf_counter() - t0

    trainer.save_checkpoint = timed_save
    t0 = time.perf_counter()
    trainer.fit(overwrite=True)
    seconds = time.perf_counter() - t0
    records = [json.loads(line) for line in (out_dir / LOG_FILE).read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if r.get("type") == "train"]
    return {"train_s": round(seconds, 1), "checkpoint_s": round(saving[0], 1), "losses": losses,
            "batches": data.digest()}


def train_peer(peer: PeerAdapter, train_set, cfg: RunConfig) -> dict[str, Any]:
    """The reference loop a peer's user writes: loss, backward, (clip), step, schedule step; same batches."""
    tc, dc = cfg.train, cfg.data
    data = Recorder(train_set)
    per_epoch = len(train_set) // dc.batch_size
    sampler = ShardSampler(len(train_set), 0, 1, shuffle=True, seed=tc.seed,
                           num_samples_per_rank=per_epoch * dc.batch_size)
    optimizer = build_optimizer(peer, tc.optimizer, lr=tc.lr, weight_decay=tc.weight_decay, momentum=tc.momentum,
                                betas=tc.betas)
    scheduler = build_scheduler(optimizer, tc.max_steps, tc.schedule, warmup_steps=tc.warmup_steps,
                                warmup_factor=tc.warmup_factor, poly_power=tc.poly_power, min_lr_ratio=tc.min_lr_ratio)
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    peer.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    while len(losses) < tc.max_steps:
        sampler.set_epoch(len(losses) // per_epoch)
        batches = iter(DataLoader(SeededDataset(data, tc.seed), batch_size=dc.batch_size, sampler=sampler,
                                  collate_fn=get_task(peer.task).collate, drop_last=True))
        for _ in range(min(per_epoch, tc.max_steps - len(losses))):
            images, targets = next(batches)
            loss = peer.loss(images, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(peer.parameters(), tc.clip_grad)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
    return {"train_s": round(time.perf_counter() - t0, 1), "checkpoint_s": 0.0, "losses": losses,
            "batches": data.digest()}


def score(model: nn.Module, val_set, cfg: RunConfig, case: Case) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = evaluate(model, val_set, batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
                      ignore_index=cfg.data.ignore_index)
    return {"eval_s": round(time.perf_counter() - t0, 1),
            "metrics": {m.label: round(m.read(result["metrics"]), 4) for m in case.metrics}}


@torch.no_grad()
def initial_agreement(ours: nn.Module, peer: PeerAdapter, val_set) -> dict[str, Any]:
    """How far apart the two freshly built models' outputs are on held-out tiles (eval mode)."""
    ours.eval()
    peer.eval()
    if peer.task == "semantic":
        x = torch.stack([val_set[i][0] for i in range(min(2, len(val_set)))])
        if hasattr(peer, "stride4_logits"):  # the two heads upsample differently: compare before they do
            diff = float(torch.sub(*peer.stride4_logits(ours, x)).abs().max())
            return {"max_abs_logit_diff_at_stride_4": diff, "agree": diff < 1e-3}
        diff = float((ours(x) - peer(x)).abs().max())
        return {"max_abs_logit_diff": diff, "agree": diff < 1e-3}
    image = val_set[0][0]
    a, b = ours([image])[0], peer([image])[0]
    n = (len(a["scores"]), len(b["scores"]))
    out: dict[str, Any] = {"detections": list(n), "agree": n[0] == n[1]}
    if n[0] == n[1] and n[0]:
        out["max_abs_score_diff"] = float((a["scores"].sort().values - b["scores"].sort().values).abs().max())
        out["min_best_box_iou"] = float(box_iou(a["boxes"], b["boxes"]).max(1).values.min())  # each box in the other
        out["agree"] = out["max_abs_score_diff"] < 1e-3 and out["min_best_box_iou"] > 0.99
    return out


# ---------------------------------------------------------------------------------------------- one run
def run_case(case: Case, seed: int, steps: int, out_dir: str | os.PathLike | None = None,
             build_overrides: dict[str, Any] | None = None, peer_side: bool = True, scored: bool = True,
             log=print) -> dict[str, Any]:
    """Train and score both sides of ``case`` for ``steps`` steps from seed ``seed``.

    Args:
        out_dir: where the segzoo run folder goes (a temporary folder by default).
        build_overrides: extra model options for both sides (the parity check's exhaustive sampling).
        peer_side: train the peer too (False: segzoo only).
        scored: evaluate both sides on the held-out tiles after training.
    """
    cfg = make_config(case, seed, steps)
    ours, peer = case.build(seed, **(build_overrides or {}))
    if not peer_side:
        peer = None
    data = cfg.data
    train_set = build_dataset(data, "train", get_task(ours.task).target)
    val_set = build_dataset(data, "val", get_task(ours.task).target)
    result: dict[str, Any] = {"case": case.name, "seed": seed, "steps": steps, "load_start": load_average(),
                              "threads": torch.get_num_threads(), "train_tiles": len(train_set),
                              "val_tiles": len(val_set)}
    if peer is not None:
        result["init"] = initial_agreement(ours, peer, val_set)
        log(f"  initial outputs: {result['init']}")
    with tempfile.TemporaryDirectory(prefix="segzoo-ledger-") as tmp:
        folder = Path(out_dir) / f"{case.name}-seed{seed}" if out_dir is not None else Path(tmp) / "run"
        side = train_segzoo(ours, train_set, cfg, folder)
    side.update(score(ours, val_set, cfg, case) if scored else {"eval_s": 0.0, "metrics": {}})
    result["segzoo"] = side
    log(f"  segzoo: {side['metrics']}  train {side['train_s']} s (checkpoints {side['checkpoint_s']} s), "
        f"eval {side['eval_s']} s")
    if peer is not None:
        other = train_peer(peer, train_set, cfg)
        other.update(score(peer, val_set, cfg, case) if scored else {"eval_s": 0.0, "metrics": {}})
        result["peer"] = other
        result["same_batches"] = side["batches"] == other["batches"]
        log(f"  peer:   {other['metrics']}  train {other['train_s']} s, eval {other['eval_s']} s; "
            f"same batches: {result['same_batches']}")
    result["load_end"] = load_average()
    return result


# every anchor and every region sampled: the losses no longer depend on which random subset each
# library draws, so from identical weights and batches they must agree step by step
EXHAUSTIVE = {"rpn_batch_size_per_image": 10**6, "box_batch_size_per_image": 10**6}


def _relative(a: list[float], b: list[float]) -> list[float]:
    return [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)]


def parity(case: Case, seed: int, steps: int, log=print) -> dict[str, Any]:
    """Train both sides ``steps`` steps from identical weights and batches and compare the losses step by step.

    Detection cases sample every anchor and region (:data:`EXHAUSTIVE`); U-Net has no sampling.
    The control trains the peer against itself with its weights nudged by 1e-7 (relative): how far
    float rounding alone moves the losses in as many steps (an RPN proposal that flips at an NMS or
    top-k boundary makes a step change). Returns the per-step losses and relative differences.
    """
    overrides = EXHAUSTIVE if case.model.startswith(("maskrcnn_", "fasterrcnn_")) else {}
    result = run_case(case, seed, steps, build_overrides=overrides, scored=False, log=log)
    a, b = result["segzoo"]["losses"], result["peer"]["losses"]
    rel = _relative(a, b)
    _, peer = case.build(seed, **overrides)
    nudged = copy.deepcopy(peer)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in nudged.parameters():
            param.mul_(1 + 1e-7 * torch.randn(param.shape, generator=g))
    cfg = make_config(case, seed, steps)
    train_set = build_dataset(cfg.data, "train", get_task(peer.task).target)
    control = _relative(train_peer(nudged, train_set, cfg)["losses"], b)
    return {"case": case.name, "seed": seed, "steps": steps, "segzoo": a, "peer": b, "relative_diff": rel,
            "first_step": rel[0] if rel else None, "max": max(rel) if rel else None,
            "control": control, "control_max": max(control) if control else None,
            "same_batches": result["same_batches"], "init": result["init"]}


def crosscheck(case: Case, seed: int, steps: int, log=print) -> dict[str, Any]:
    """Train the peer, map its trained weights into a fresh segzoo model and score both on the held-out tiles.

    Equal metrics and equal detections say that segzoo's inference (decoding, NMS, mask pasting)
    scores the peer's own weights exactly as the peer does: any gap in the ledger comes from training.
    """
    if not case.model.startswith(("maskrcnn_", "fasterrcnn_")):
        raise ValueError(f"crosscheck maps torchvision R-CNN weights; {case.name} is not an R-CNN case")
    cfg = make_config(case, seed, steps)
    ours, peer = case.build(seed)
    data = cfg.data
    target = get_task(ours.task).target
    train_set, val_set = build_dataset(data, "train", target), build_dataset(data, "val", target)
    trained = train_peer(peer, train_set, cfg)
    log(f"  peer trained {steps} steps in {trained['train_s']} s")
    load_torchvision_rcnn(ours, peer.net, case.model.split()[0])
    out: dict[str, Any] = {"case": case.name, "seed": seed, "steps": steps,
                           "peer": score(peer, val_set, cfg, case)["metrics"],
                           "segzoo_with_peer_weights": score(ours, val_set, cfg, case)["metrics"]}
    ours.eval()
    peer.eval()
    worst = {"score": 0.0, "box": 0.0, "mask_prob": 0.0, "mask_pixels": 0, "same_counts": True}
    with torch.no_grad():
        for i in range(len(val_set)):
            image = val_set[i][0]
            a, b = ours([image])[0], peer([image])[0]
            if len(a["scores"]) != len(b["scores"]):
                worst["same_counts"] = False
                continue
            if not len(a["scores"]):
                continue
            worst["score"] = max(worst["score"], float((a["scores"] - b["scores"]).abs().max()))
            worst["box"] = max(worst["box"], float((a["boxes"] - b["boxes"]).abs().max()))
            if "masks" in a:
                worst["mask_prob"] = max(worst["mask_prob"], float((a["masks"] - b["masks"]).abs().max()))
                worst["mask_pixels"] += int(((a["masks"] > 0.5) != (b["masks"] > 0.5)).sum())
    out["largest_differences"] = worst
    out["agree"] = out["peer"] == out["segzoo_with_peer_weights"] and worst["same_counts"]
    return out
