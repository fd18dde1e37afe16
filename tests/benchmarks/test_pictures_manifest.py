"""docs/pictures/manifest.json is current: what benchmarks.pictures would list, every file present, no re-run."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from benchmarks import pictures

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REFS = re.compile(r"(?:!\[[^\]]*\]\(|<img [^>]*src=\")([^)\"\s]*pictures/[^)\"\s]+)")


@pytest.fixture(scope="module")
def manifest() -> dict:
    assert pictures.MANIFEST.exists(), "no docs/pictures/manifest.json: run `python -m benchmarks.pictures`"
    return json.loads(pictures.MANIFEST.read_text())


def test_manifest_lists_what_the_script_draws(manifest):
    listed = [e["file"] for e in manifest["pictures"]]
    assert listed == [p.file for p in pictures.PICTURES], "run `python -m benchmarks.pictures` (the list changed)"
    runs = {r.name: r for r in pictures.RUNS}
    for entry, pic in zip(manifest["pictures"], pictures.PICTURES):
        run = runs[pic.run]
        assert (entry["run"], entry["config"], entry["caption"]) == (run.name, run.config, pic.caption), entry["file"]
        assert entry["drawn_by"] == f"segzoo {pic.drawn_by}" and entry["command"].startswith(f"segzoo {pic.drawn_by} ")
        assert entry["data_licence"] == pictures.LICENCES[run.data]
        assert isinstance(entry["measured"]["value"], float) and entry["measured"]["metric"]


def test_every_listed_picture_exists_and_is_small(manifest):
    total = 0
    for entry in manifest["pictures"]:
        path = pictures.OUT_DIR / entry["file"]
        assert path.is_file(), f"{path} is listed in the manifest but missing: run `python -m benchmarks.pictures`"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        assert path.stat().st_size == entry["bytes"], f"{path} changed since the manifest was written"
        total += entry["bytes"]
    assert total < 600_000, f"the pictures weigh {total} bytes; keep docs/pictures to a few hundred KB"


def test_the_configs_named_exist_and_are_unchanged(manifest):
    for entry in manifest["pictures"]:
        config = ROOT / entry["config"]
        assert config.is_file(), f"{entry['file']}: config {entry['config']} does not exist"
        digest = hashlib.sha256(config.read_bytes()).hexdigest()
        assert digest == entry["config_sha256"], (
            f"{entry['config']} changed since {entry['file']} was drawn: run `python -m benchmarks.pictures`")


def test_every_picture_the_docs_show_is_listed(manifest):
    listed = {e["file"] for e in manifest["pictures"]}
    shown = set()
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        for ref in REFS.findall(page.read_text()):
            target = (page.parent / ref).resolve()
            assert target.parent == pictures.OUT_DIR, f"{page}: {ref} is not in docs/pictures/"
            assert target.name in listed, f"{page} shows {ref}, which the manifest does not list"
            shown.add(target.name)
    assert shown, "no docs page shows a picture of docs/pictures/"
    assert "quickstart_predictions.png" in shown, "the quickstart's picture is the one a newcomer looks for"


def test_the_reference_pattern_finds_markdown_and_html_images():
    text = '![a](pictures/x.png) and <img src="../pictures/y.png" width="300"> but not [link](other/z.png)'
    assert REFS.findall(text) == ["pictures/x.png", "../pictures/y.png"]
