"""Facts about registered models, for the README's model table and the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from segzoo.registry import build, get_entry, list_models

START, END = "<!-- models:start -->", "<!-- models:end -->"


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


def update_readme(path: str | Path) -> bool:
    """Rewrite the table between the model markers of a README; True if it changed."""
    path = Path(path)
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} markers")
    new = re.sub(re.escape(START) + r".*?" + re.escape(END),
                 lambda _: f"{START}\n{model_table()}\n{END}", text, flags=re.S)
    if new != text:
        path.write_text(new)
    return new != text
