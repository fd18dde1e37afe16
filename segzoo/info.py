"""Facts about registered models, for the README's model table and the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from segzoo.published import get_weights, list_weights
from segzoo.registry import build, get_entry, list_models

START, END = "<!-- models:start -->", "<!-- models:end -->"
WEIGHTS_START, WEIGHTS_END = "<!-- weights:start -->", "<!-- weights:end -->"


def _build_meta(name: str):
    """``build(name)`` on the meta device (no memory used), or on the CPU for a constructor
    that computes on its weights."""
    try:
        with torch.device("meta"):
            return build(name)
    except (NotImplementedError, RuntimeError):
        return build(name)


def summary(doc: str) -> str:
    """The first sentence of a docstring, on one line, without reST markup."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]
    return re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], sentence).replace("``", "")


def model_rows(pattern: str = "*") -> list[dict]:
    rows = []
    for name in list_models(pattern):
        entry = get_entry(name)
        model = _build_meta(name)
        rows.append({
            "name": name,
            "task": model.task,
            "num_classes": model.num_classes,
            "params": sum(p.numel() for p in model.parameters()),
            "summary": summary(entry.fn.__doc__ or type(model).__doc__ or ""),
        })
    return rows


def model_table(pattern: str = "*") -> str:
    """A markdown table of registered models with their default class count and parameters."""
    lines = ["| model | task | default num_classes | parameters | architecture |",
             "|---|---|---:|---:|---|"]
    for r in model_rows(pattern):
        lines.append(f"| `{r['name']}` | {r['task']} | {r['num_classes']} | {r['params']:,} | "
                     f"{r['summary'].rstrip('.')} |")
    return "\n".join(lines)


def weights_table(pattern: str = "*") -> str:
    """A markdown table of the published weights (``segzoo.list_weights``): what ``weights=TAG`` loads."""
    lines = ["| model | tag | dataset | classes | reported | source | licence |", "|---|---|---|---:|---|---|---|"]
    for name in list_weights(pattern):
        e = get_weights(name)
        reported = ", ".join(f"{k} {v:g}" for k, v in e.metrics)
        split = re.search(r"\(([^();]*)", e.metric_source)
        if split:
            reported += f" ({split.group(1)})"
        source = {"torchvision": "torchvision, downloaded",
                  "huggingface": f"[Hugging Face hub]({e.page}), downloaded"}.get(e.source, f"[by hand]({e.page})")
        lines.append(f"| `{e.model}` | `{e.tag}` | {e.dataset.split(' (')[0]} | {len(e.classes)} | {reported} | "
                     f"{source} | {e.licence.split(';')[0].split(' (')[0]} |")
    return "\n".join(lines)


def _replace(text: str, start: str, end: str, table: str, path: Path) -> str:
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} markers")
    return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{table}\n{end}", text, flags=re.S)


def update_readme(path: str | Path) -> bool:
    """Rewrite the model and weights tables between their markers in a README; True if it changed."""
    path = Path(path)
    text = path.read_text()
    new = _replace(text, START, END, model_table(), path)
    new = _replace(new, WEIGHTS_START, WEIGHTS_END, weights_table(), path)
    if new != text:
        path.write_text(new)
    return new != text
