"""Every code block of the README and of the docs (docs/**/*.md) runs as written, or says why not.

A block preceded by the line ``<!-- not run: REASON -->`` is not run (it needs the reader's own
data, a GPU or a download); its commands still parse and its flags must exist. Every other block
is ``python``, ``yaml`` or ``bash`` and is checked as follows.

- YAML blocks are configs: each loads through the config loader (its ``_base_`` resolved as in
  ``configs/``), the files its data section names are generated, and ``segzoo data check`` passes.
- Python blocks run top to bottom, each in a fresh namespace, in a folder that holds what the
  pages say exists at that point: the quickstart's run folder and a photo, and (offline, no
  network) the pretrained weights the blocks name, pre-filled in segzoo's cache. ``torch.compile``
  runs with the eager backend: dynamo still traces ``fullgraph=True`` (a graph break fails), only
  the C++ code generation is skipped.
- Bash blocks: each ``python tools/X.py`` / ``segzoo`` / ``torchrun`` line names a tool that
  exists, parses with that command's arguments, names config files that exist, and its config
  with its overrides loads.
"""

from __future__ import annotations

import re
import runpy
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import segzoo
from segzoo import cli, hub
from segzoo.config import load_config
from segzoo.hub import download, weights
from segzoo.hub.published import get_weights, resolve

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")


def _all_blocks() -> list[tuple[str, int, str, str, str | None]]:
    """``(page, line, lang, text, reason not run or None)`` of every fenced block."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            line = text[: m.start()].count("\n") + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            reason = NOT_RUN.search(before)
            found.append((page.relative_to(REPO).as_posix(), line, m.group(1), m.group(2),
                          reason.group(1) if reason else None))
    return found


def blocks(lang: str, runnable: bool = True) -> list[tuple[str, str]]:
    """``(where, text)`` of the fenced blocks in ``lang``; ``runnable=False``: those marked not run too."""
    return [(f"{page}:{line}", text) for page, line, kind, text, reason in _all_blocks()
            if kind == lang and (reason is None or not runnable)]


def ids(found: list[tuple[str, str]]) -> list[str]:
    return [where for where, _ in found]


def test_the_readme_and_docs_have_blocks_of_each_kind():
    assert len(blocks("python")) >= 3 and len(blocks("yaml")) >= 1 and len(blocks("bash")) >= 3
    assert any(where.startswith("README.md") for where, _ in blocks("python"))


def test_every_block_is_checked_here_or_says_why_not():
    for page, line, lang, _, reason in _all_blocks():
        assert reason is not None or lang in ("python", "yaml", "bash"), (
            f"{page}:{line}: a ```{lang} block is not checked by a test; make it python/yaml/bash or put "
            "<!-- not run: REASON --> on the line before it")


# ---------------------------------------------------------------------------- YAML


def _write_mask_folder(images: Path, masks: Path, num_classes: int, n: int = 3) -> None:
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i:03d}.jpg")
        mask = np.zeros((40, 48), np.uint8)
        mask[5:20, 6:30] = 1 + i % (num_classes - 1)  # every image has an object
        Image.fromarray(mask).save(masks / f"{i:03d}.png")


def _write_coco(images: Path, annotations: Path, num_classes: int, n: int = 2) -> None:
    """A COCO json with one square object per category in each image."""
    import json

    images.mkdir(parents=True, exist_ok=True)
    annotations.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    doc = {"images": [], "annotations": [],
           "categories": [{"id": c + 1, "name": f"class{c + 1}"} for c in range(num_classes)]}
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i:03d}.jpg")
        doc["images"].append({"id": i + 1, "file_name": f"{i:03d}.jpg", "height": 40, "width": 48})
        for c in range(num_classes):
            x0, y0 = 4 + 12 * c, 6
            poly = [x0, y0, x0 + 10, y0, x0 + 10, y0 + 10, x0, y0 + 10]
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i + 1, "category_id": c + 1,
                                       "iscrowd": 0, "bbox": [x0, y0, 10, 10], "area": 100.0,
                                       "segmentation": [[float(v) for v in poly]]})
    annotations.write_text(json.dumps(doc))


def _generate_data(cfg, config_file: Path) -> None:
    """Write a few files where the config's data section says its data lives."""
    import data_layouts

    data = cfg.data
    splits = [s for s in (data.train, data.val) if s]
    if data.type == "mask_folder":
        for split in splits:
            _write_mask_folder(Path(split["images"]), Path(split["masks"]), cfg.model["num_classes"])
    elif data.type == "coco":
        for split in splits:
            _write_coco(Path(split["images"]), Path(split["annotations"]), cfg.model["num_classes"])
    elif data.type == "labelme":
        for split in splits:
            data_layouts.write_labelme(Path(split["root"]))
    elif data.type == "yolo":
        for root in {split["root"] for split in splits}:
            data_layouts.write_yolo(Path(root))
    elif data.type not in ("shapes", "shapes_multilabel"):  # the generated datasets write themselves
        pytest.fail(f"{config_file.name}: teach tests/docs/test_readme_blocks.py to write "
                    f"data.type={data.type!r} files")


@pytest.mark.parametrize("where,text", blocks("yaml"), ids=ids(blocks("yaml")))
def test_yaml_block_is_a_config_that_loads_and_whose_data_checks(where, text, tmp_path, monkeypatch, capsys):
    assert isinstance(yaml.safe_load(text), dict), f"{where}: not a YAML mapping"
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs" / "_base_", configs / "_base_")
    path = configs / "block.yaml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    _generate_data(cfg, path)
    assert cli.main(["data", "check", str(path)]) == 0, capsys.readouterr()


# ---------------------------------------------------------------------------- Python

QUICKSTART_CLASSES = ["background", "circle", "square", "triangle"]


@pytest.fixture
def readme_folder(tmp_path, monkeypatch):
    """A folder as the README's reader has it: after the quickstart, with a photo, and with the
    pretrained weights the blocks name already in the cache (offline: nothing is downloaded)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGZOO_HOME", str(tmp_path / "cache" / "segzoo"))
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = segzoo.build(**load_config(REPO / "configs" / "quickstart.yaml").model)
    segzoo.save(model, "runs/quickstart/model.safetensors", classes=QUICKSTART_CLASSES)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save("photo.jpg")

    # torchvision-published weights, converted and cached as segzoo.build(weights=TAG) leaves them
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    entry = get_weights("deeplabv3_mobilenetv3_large.tv_coco_voc")
    tv = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=True)
    weights._convert_and_store(entry, tv.state_dict(), {"test": "random weights"})
    # timm ImageNet weights of the U-Net encoder, where timm's loading finds them
    name = download.timm_name("resnet34", "imagenet")
    state = {k: v.contiguous() for k, v in timm.create_model("resnet34").state_dict().items()}
    save_file(state, str(tmp_path / "resnet34.safetensors"))
    download.import_timm_file(name, tmp_path / "resnet34.safetensors")
    return tmp_path


def _eager_compile(monkeypatch):
    real = torch.compile

    def compile_eager(model=None, **kwargs):
        kwargs["backend"] = "eager"
        return real(model, **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eager)


# the Python API page fine-tunes a 4-class checkpoint into a 5-class model on purpose: the warning is what it shows
@pytest.mark.filterwarnings("ignore:num_classes differs from the checkpoint:UserWarning")
@pytest.mark.parametrize("where,text", blocks("python"), ids=ids(blocks("python")))
def test_python_block_runs(where, text, readme_folder, monkeypatch):
    _eager_compile(monkeypatch)
    torch.manual_seed(0)
    script = readme_folder / "block.py"
    script.write_text(text)
    runpy.run_path(str(script), run_name="__readme__")


# ---------------------------------------------------------------------------- bash


def commands(runnable: bool = True) -> list[tuple[str, list[str]]]:
    """Every tools/segzoo/torchrun command line of the bash blocks, continuations joined
    (``runnable=False``: of the blocks marked not run too)."""
    found = []
    for where, text in blocks("bash", runnable):
        page, line = where.rsplit(":", 1)
        joined = re.sub(r"\\\n\s*", " ", text)
        for i, raw in enumerate(joined.splitlines()):
            words = shlex.split(raw, comments=True)
            for sep in ("&&", ";"):  # the first block chains its commands
                while sep in words:
                    j = words.index(sep)
                    found.append((f"{page}:{int(line) + i}", words[:j]))
                    words = words[j + 1:]
            if words:
                found.append((f"{page}:{int(line) + i}", words))
    return [(n, w) for n, w in found
            if w[0] in ("python", "torchrun", "segzoo") and w[:3] != ["python", "-m", "pytest"]]


def _segzoo_argv(words: list[str]) -> list[str] | None:
    """The ``segzoo`` arguments of a command line, or None for a tool that is not a CLI shim."""
    if words[0] == "segzoo":
        return words[1:]
    if words[0] == "torchrun":
        words = ["python", *[w for w in words[1:] if not w.startswith("--") and not w.isdigit()]]
    if words[1] == "-m":  # python -m MODULE: a module of segzoo or of the repository's tools
        module = words[2]
        if module == "segzoo.cli":
            return words[3:]
        path = REPO / module.replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), f"{module} does not exist"
        return None
    tool = REPO / words[1]
    assert tool.is_file(), f"{words[1]} does not exist"
    shim = re.search(r'command\("([\w ]+)"\)', tool.read_text())
    return [*shim.group(1).split(), *words[2:]] if shim else None


@pytest.mark.parametrize("where,words", commands(), ids=[n for n, _ in commands()])
def test_bash_command_parses_and_its_config_loads(where, words, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = _segzoo_argv(words)
    for word in words:
        if word.endswith(".yaml"):
            assert (REPO / word).is_file(), f"{where} names {word}, which does not exist"
    if argv is None:
        return
    args, extra = cli._parser().parse_known_args(argv)
    cmd = args.command_spec
    assert all(cmd.overrides and "=" in e and not e.startswith("-") for e in extra), extra
    config = getattr(args, "config", None) or getattr(args, "data", None)
    if config is not None and cmd.overrides:
        model = load_config(config, [*args.overrides, *extra]).model
        tag = model.get("weights")
        if isinstance(tag, str) and not hub.looks_like_path(tag):
            resolve(model["name"], tag)  # a published tag of this model


NOT_RUN_COMMANDS = [c for c in commands(runnable=False) if c not in commands()]


@pytest.mark.parametrize("where,words", NOT_RUN_COMMANDS, ids=[n for n, _ in NOT_RUN_COMMANDS])
def test_a_command_not_run_still_parses(where, words):
    """The blocks that need the reader's files: their tools exist and their flags parse."""
    argv = _segzoo_argv(words)
    if argv is not None:
        args, extra = cli._parser().parse_known_args(argv)
        assert all(args.command_spec.overrides and "=" in e and not e.startswith("-") for e in extra), extra
