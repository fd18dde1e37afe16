"""Every command-line flag and config key that the README and the docs name exists.

Flags (``--name``) are compared with the option strings of segzoo's argparse parser (every
subcommand) and of the tools' own parsers; config keys (``train.lr``, ``data.augment.size``,
``model.dice_weight``) with the typed config's dataclasses and, for ``model.*``, the arguments that
the registered builders and their classes accept. The changelog is history and is left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import re
import typing
from pathlib import Path

import pytest

import segzoo
from segzoo import cli
from segzoo.config import RunConfig
from segzoo.data import DATASET_TYPES
from segzoo.registry import get_entry

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md",
         *sorted(p for p in (REPO / "docs").rglob("*.md") if p.name != "changelog.md")]
# the measurements of the repository's benchmarks/ package (modules) and the maintenance scripts (files)
TOOL_PARSERS = ["benchmarks.speed.main", "benchmarks.ledger.main", "benchmarks.ledger.transfer",
                "benchmarks.int8_accuracy", "benchmarks.soak", "benchmarks.speed.slicing_memory",
                "benchmarks.ledger.sliced_trees", "tools/model_table.py", "tools/changelog.py",
                "benchmarks.trainer_overhead", "benchmarks.speed.semantic_memory",
                "benchmarks.speed.setpred_memory", "benchmarks.speed.dcn_paths", "benchmarks.speed.scaling",
                "benchmarks.speed.workrate"]
# flags of other programs that the docs name (torchrun, pip, pytest, mkdocs, and the references' own options)
OTHER_PROGRAMS = {"--nproc_per_node", "--nnodes", "--node_rank", "--rdzv_backend", "--rdzv_endpoint", "--rdzv_id",
                  "--index-url", "--no-deps", "--sync-bn", "--aspect-ratio-group-factor", "--keep_res", "--cov",
                  "--strict", "--config-settings", "--backend-store-uri"}
CODE = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
KEY = re.compile(r"(?<![\w./-])(model|data|train|eval)\.([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)")


def _code(text: str) -> list[str]:
    """The inline code spans and the bash blocks of a page (what a reader types)."""
    spans = [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "bash"]
    return spans + CODE.findall(FENCE.sub("", text))


def _options(parser: argparse.ArgumentParser) -> set[str]:
    found = set()
    for action in parser._actions:
        found.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


class _Parsed(Exception):
    pass


def _tool_options(path: str, monkeypatch) -> set[str]:
    """The option strings of a tool's parser: its main() runs until it parses, then stops."""
    seen: list[argparse.ArgumentParser] = []

    def stop(self, args=None, namespace=None):
        seen.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop)
    if path.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_docs_tool_{Path(path).stem}", REPO / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(path)
    with pytest.raises(_Parsed):
        module.main([])
    return _options(seen[0])


def _documented(pattern: re.Pattern) -> dict[str, str]:
    """``{name: the page that names it}`` of every match in the pages' code."""
    found = {}
    for page in PAGES:
        for code in _code(page.read_text()):
            for m in pattern.finditer(code):
                found.setdefault(m.group(0), page.relative_to(REPO).as_posix())
    return found


def test_every_flag_in_the_docs_exists(monkeypatch):
    known = _options(cli._parser()) | OTHER_PROGRAMS
    for path in TOOL_PARSERS:
        known |= _tool_options(path, monkeypatch)
    flags = _documented(FLAG)
    assert len(flags) > 30, "the flag pattern found almost nothing: is it broken?"
    unknown = {f: page for f, page in flags.items() if f not in known}
    assert not unknown, f"flags named in the docs that no parser has: {unknown}"


def _fields(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dataset_arguments() -> set[str]:
    names = {"root", "split"}
    for cls in DATASET_TYPES.values():
        names |= set(cls.config_keys)  # what each reader takes as data.<split>.KEY
    return names


def _model_arguments() -> set[str]:
    names = {"name", "weights", "backbone_weights", "num_classes"}  # what build() itself reads
    for model in segzoo.list_models():
        entry = get_entry(model)
        names |= set(inspect.signature(entry.fn).parameters)
        for klass in entry.cls.__mro__:
            if "__init__" in vars(klass):
                names |= set(inspect.signature(klass.__init__).parameters)
    return names - {"self", "kwargs"}


@functools.cache
def _tiny_model():
    return segzoo.build("unet", num_classes=2, channels=[4, 8, 16, 32, 64])


def _model_attribute(name: str) -> bool:
    """``model.X`` in prose is often the Python object (``model.training``, ``model.exportable()``)."""
    return hasattr(_tiny_model(), name) or any(hasattr(get_entry(m).cls, name) for m in segzoo.list_models())


def _key_exists(section: str, path: list[str], models: set[str], datasets: set[str]) -> bool:
    if section == "model":
        return path[0] in models or _model_attribute(path[0])
    cls = _fields(RunConfig)[section]
    for i, part in enumerate(path):
        fields = _fields(cls)
        if part not in fields:
            return False
        if section == "data" and part in ("train", "val"):  # dataset arguments of a split
            return len(path) == i + 1 or path[i + 1] in datasets
        cls = fields[part]
        if not dataclasses.is_dataclass(cls):
            return len(path) == i + 1
    return True


def test_every_config_key_in_the_docs_exists():
    keys = _documented(KEY)
    assert len(keys) > 30, "the key pattern found almost nothing: is it broken?"
    models, datasets = _model_arguments(), _dataset_arguments()
    unknown = {}
    for key, page in keys.items():
        section, *path = key.split(".")
        if path[-1] in ("yaml", "json", "txt", "png", "safetensors", "pt2", "onnx"):  # a file name such as data.yaml
            continue
        if not _key_exists(section, path, models, datasets):
            unknown[key] = page
    assert not unknown, f"config keys named in the docs that the typed config does not have: {unknown}"


def test_the_checks_catch_a_wrong_name(monkeypatch):
    """The two checks above fail on a flag or key that does not exist."""
    assert not _key_exists("train", ["learning_rate"], _model_arguments(), _dataset_arguments())
    assert not _key_exists("data", ["augment", "sise"], _model_arguments(), _dataset_arguments())
    assert not _key_exists("model", ["dice_weigth"], _model_arguments(), _dataset_arguments())
    assert _key_exists("model", ["dice_weight"], _model_arguments(), _dataset_arguments())
    assert _key_exists("data", ["augment", "size"], _model_arguments(), _dataset_arguments())
    assert _key_exists("data", ["train", "root"], _model_arguments(), _dataset_arguments())
    assert "--no-such-flag" not in _options(cli._parser())
