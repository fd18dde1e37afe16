"""What ``segzoo eval`` prints and writes for an :func:`~segzoo.engine.evaluate` result.

:func:`format_results` is the metric table; :func:`write_report` writes ``metrics.json``,
``pr_curves.png``, ``predictions_NNN.png`` panels and, for semantic models, ``confusion.csv``
and ``confusion.png`` (the plots need matplotlib: ``pip install segzoo[plot]``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from segzoo.checkpoint import atomic_write
from segzoo.engine.logs import jsonable
from segzoo.metrics import format_table, plot_confusion_matrix, plot_pr_curves
from segzoo.visualize import save_image


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def coco_table(metrics: dict[str, Any], names: list[str]) -> str:
    """Per-class AP and the summary APs of each IoU type, in percent."""
    lines = []
    for iou_type in ("bbox", "segm"):
        per_class = metrics.get(f"{iou_type}_per_class")
        if per_class is None:
            continue
        width = max(5, *(len(n) for n in names))
        lines.append(f"{iou_type} AP per class")
        lines += [f"  {name:<{width}}  {_pct(per_class.get(name, math.nan))}" for name in names]
        lines += [f"  {iou_type}_{stat:<5} {_pct(metrics[f'{iou_type}_{stat}'])}"
                  for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    return "\n".join(lines)


def panoptic_table(metrics: dict[str, Any], names: list[str]) -> str:
    """PQ, SQ, RQ per category (percent) with its TP/FP/FN counts; ``-`` for categories that never occur."""
    width = max(5, *(len(n) for n in names))
    lines = [f"  {'class':<{width}}  kind   {'PQ':>6} {'SQ':>6} {'RQ':>6} {'TP':>5} {'FP':>5} {'FN':>5}"]
    for name in names:
        r = metrics["per_class"].get(name)
        if r is None:
            continue
        kind = "thing" if r["is_thing"] else "stuff"
        lines.append(f"  {name:<{width}}  {kind}  {_pct(r['pq']):>6} {_pct(r['sq']):>6} {_pct(r['rq']):>6} "
                     f"{r['tp']:>5} {r['fp']:>5} {r['fn']:>5}")
    return "\n".join(lines)


def format_results(result: dict[str, Any]) -> str:
    """The metric table of an evaluation result."""
    names, metrics = result["class_names"], result["metrics"]
    if result["task"] == "panoptic":
        return f"{result['coco_summary']}\n{panoptic_table(metrics, names)}"
    if result["task"] == "semantic":
        text = format_table(metrics, names)
        if "pr_map" in metrics:
            text += f"\n{'pr_map':<10} {_pct(metrics['pr_map']):>7}"
        return text
    return f"{result['coco_summary']}\n{coco_table(metrics, names)}"


def write_report(result: dict[str, Any], out_dir: str | Path, **info: Any) -> Path:
    """Write the files of an evaluation into ``out_dir``; ``info`` goes into ``metrics.json``.

    Returns:
        The path of ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names, task = result["class_names"], result["task"]
    summary = {**info, "task": task, "num_images": result["num_images"], "class_names": names,
               "metrics": result["metrics"]}
    if "pr_curves" in result:
        summary["pr_curves"] = {names[c]: {k: v for k, v in cur.items() if k in ("ap", "best_f1", "best_threshold")}
                                for c, cur in enumerate(result["pr_curves"]["per_class"])}
    if task == "semantic":
        cm = result["confusion"]
        rows = [",".join(["gt\\pred", *names])] + [",".join([n, *map(str, r)]) for n, r in zip(names, cm.tolist())]
        atomic_write(out / "confusion.csv", ("\n".join(rows) + "\n").encode())
    for i, pic in enumerate(result["pictures"]):
        save_image(pic, out / f"predictions_{i:03d}.png")
    try:
        if task == "semantic":
            plot_confusion_matrix(result["confusion"], out / "confusion.png", names)
        if "pr_curves" in result:
            title = "Precision-recall" if task == "semantic" else "Precision-recall (boxes, IoU 0.5)"
            plot_pr_curves(result["pr_curves"], out / "pr_curves.png", names, title=title)
    except ImportError as e:
        warnings.warn(f"no plots written: {e}", stacklevel=2)
    path = out / "metrics.json"
    atomic_write(path, (json.dumps(jsonable(summary), indent=1) + "\n").encode())
    return path
