"""Facts about registered models, for the documentation's generated tables and the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from segzoo.hub.published import get_weights, list_weights
from segzoo.registry import build, get_entry, list_models

START, END = "<!-- models:start -->", "<!-- models:end -->"
WEIGHTS_START, WEIGHTS_END = "<!-- weights:start -->", "<!-- weights:end -->"
# where the generated tables live (relative to a source checkout's root)
MODELS_PAGE, WEIGHTS_PAGE = "docs/models/index.md", "docs/weights.md"


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


def _replace(text: str, start: str, end: str, table: str) -> str:
    return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{table}\n{end}", text, flags=re.S)


def update_tables(path: str | Path) -> bool:
    """Rewrite the generated tables between their markers in a Markdown file; True if it changed.

    The file holds the model table (``<!-- models:start -->``), the weights table
    (``<!-- weights:start -->``) or both; a file with neither is refused, naming the pages
    that hold them.
    """
    path = Path(path)
    text = path.read_text()
    new = text
    found = False
    for start, end, make in ((START, END, model_table), (WEIGHTS_START, WEIGHTS_END, weights_table)):
        if (start in text) != (end in text):
            raise ValueError(f"{path} has {start if start in text else end} without its pair")
        if start in text:
            found = True
            new = _replace(new, start, end, make())
    if not found:
        raise ValueError(f"{path} has no generated-table markers ({START}, {WEIGHTS_START}); "
                         f"the tables live in {MODELS_PAGE} and {WEIGHTS_PAGE}")
    if new != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new)
        tmp.replace(path)
    return new != text
