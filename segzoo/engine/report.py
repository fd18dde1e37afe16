"""What ``segzoo eval`` prints and writes for an :func:`~segzoo.engine.evaluate` result.

:func:`format_results` is the metric table; :func:`write_report` writes ``metrics.json``,
``pr_curves.png``, ``predictions_NNN.png`` panels and, for semantic models, ``confusion.csv``
and ``confusion.png`` (the plots need matplotlib: ``pip install segzoo[plot]``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from segzoo.checkpoint import atomic_write
from segzoo.engine.logs import jsonable
from segzoo.metrics import plot_pr_curves
from segzoo.tasks import get_task
from segzoo.visualize import save_image


def format_results(result: dict[str, Any]) -> str:
    """The metric table of an evaluation result (its task's :meth:`~segzoo.tasks.Task.format_results`)."""
    return get_task(result["task"]).format_results(result)


def write_report(result: dict[str, Any], out_dir: str | Path, **info: Any) -> Path:
    """Write the files of an evaluation into ``out_dir``; ``info`` goes into ``metrics.json``.

    Returns:
        The path of ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names, task = result["class_names"], get_task(result["task"])
    summary = {**info, "task": task.name, "num_images": result["num_images"], "class_names": names,
               "metrics": result["metrics"]}
    if "pr_curves" in result:
        summary["pr_curves"] = {names[c]: {k: v for k, v in cur.items() if k in ("ap", "best_f1", "best_threshold")}
                                for c, cur in enumerate(result["pr_curves"]["per_class"])}
    task.write_tables(result, out, atomic_write)  # semantic: confusion.csv
    for i, pic in enumerate(result["pictures"]):
        save_image(pic, out / f"predictions_{i:03d}.png")
    try:
        task.plot(result, out)  # semantic: confusion.png
        if "pr_curves" in result:
            plot_pr_curves(result["pr_curves"], out / "pr_curves.png", names, title=task.pr_title)
    except ImportError as e:
        warnings.warn(f"no plots written: {e}", stacklevel=2)
    path = out / "metrics.json"
    atomic_write(path, (json.dumps(jsonable(summary), indent=1) + "\n").encode())
    return path
