"""Regenerate the pictures of the documentation (docs/pictures/) and their manifest.

    OMP_NUM_THREADS=1 python -m benchmarks.pictures                 # every picture (about 13 min on one shared core)
    OMP_NUM_THREADS=1 python -m benchmarks.pictures --only nuclei   # one run's pictures; the others stay listed

Every picture is drawn by segzoo itself: the trainer's ``predictions.png`` (``segzoo train``), the
report of ``segzoo eval`` (``confusion.png``, ``pr_curves.png``) and the overlays of ``segzoo infer``.
The runs are the quickstart (``configs/quickstart.yaml``) and two short fine-tunes from the ImageNet
MobileNetV2 (``mobilenetv2_100.tv_in1k``) on the real tiles of ``segzoo.data.formats.realdata``
(``configs/pictures/``). The script runs the commands in a work folder (``--work``, default a
temporary one), copies the pictures into ``docs/pictures/`` as small palette PNGs and writes
``docs/pictures/manifest.json``: for each picture the command that drew it, its config (with the
config's sha256), the metric measured by that run and the licence of the image data.
``tests/benchmarks/test_pictures_manifest.py`` checks that the manifest is current (without re-running).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "docs" / "pictures"
MANIFEST = OUT_DIR / "manifest.json"
COLORS = 128  # palette size of the shipped PNGs (keeps them to tens of KB)

LICENCES = {
    "shapes": "segzoo's own synthetic Shapes data (segzoo.data.synthetic.shapes), Apache-2.0 as segzoo",
    "nuclei": "stardist 0.9.2 wheel, BSD-3-Clause (stardist-0.9.2.dist-info/licenses/LICENSE.txt): "
              "stardist/data/images/img2d.tif + mask2d.tif, an image of the Kaggle Data Science Bowl 2018 "
              "(BBBC038, Caicedo et al., Nature Methods 2019)",
    "tree_crowns": "deepforest 2.1.0 wheel, MIT (deepforest-2.1.0.dist-info/licenses/LICENSE): the aerial "
                   "images deepforest/data/*.png and their Pascal VOC boxes",
}


@dataclass(frozen=True)
class Run:
    """One training run and the commands drawn from its checkpoint (``{run}`` and ``{work}`` are filled in)."""
    name: str
    config: str
    data: str                      # a key of LICENCES
    overrides: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()
    infer_images: tuple[str, ...] = ()   # image files for `segzoo infer`, relative to the work folder


@dataclass(frozen=True)
class Picture:
    file: str          # in docs/pictures/
    run: str           # a Run's name
    drawn_by: str      # "train" | "eval" | "infer"
    source: tuple[str, ...]  # the file(s) the command wrote, in its output folder (several: drawn side by side)
    caption: str


RUNS = (
    Run("quickstart", "configs/quickstart.yaml", "shapes", overrides=("data.root={work}/shapes64",),
        eval_args=("data.root={work}/shapes64",), infer_images=("shapes64/val/images",)),
    Run("nuclei", "configs/pictures/nuclei_unet_mobilenetv2.yaml", "nuclei"),
    Run("tree_crowns", "configs/pictures/tree_crowns_fasterrcnn.yaml", "tree_crowns", eval_args=("--pictures", "2")),
)

PICTURES = (
    Picture("quickstart_predictions.png", "quickstart", "train", ("predictions.png",),
            "The quickstart's U-Net on held-out Shapes images: image | prediction | ground truth"),
    Picture("quickstart_confusion.png", "quickstart", "eval", ("confusion.png",),
            "The quickstart's confusion matrix on the 100 validation images (segzoo eval)"),
    Picture("quickstart_infer.png", "quickstart", "infer",
            tuple(f"{i:06d}_overlay.png" for i in range(1000, 1004)),
            "segzoo infer's overlays of four validation images (mask over the image, with a legend)"),
    Picture("nuclei_predictions.png", "nuclei", "train", ("predictions.png",),
            "U-Net (MobileNetV2, ImageNet start) after 60 steps on the stardist nuclei: held-out tiles"),
    Picture("nuclei_pr_curves.png", "nuclei", "eval", ("pr_curves.png",),
            "Per-pixel precision-recall curves of the nuclei model on the held-out tiles (segzoo eval)"),
    Picture("nuclei_confusion.png", "nuclei", "eval", ("confusion.png",),
            "Confusion matrix of the nuclei model on the held-out tiles (segzoo eval)"),
    Picture("tree_crowns_predictions.png", "tree_crowns", "train", ("predictions.png",),
            "Faster R-CNN (MobileNetV2 FPN, ImageNet start) after 120 steps on the deepforest crowns: held-out tiles"),
    Picture("tree_crowns_pr_curves.png", "tree_crowns", "eval", ("pr_curves.png",),
            "Box precision-recall curve (IoU 0.5) of the tree-crown model on the held-out tiles (segzoo eval)"),
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def commands(run: Run, work: Path) -> dict[str, list[str]]:
    """The segzoo commands of one run, as argument lists (``python -m segzoo.cli ...``)."""
    fill = {"work": str(work), "run": str(work / run.name)}
    out = str(work / run.name)
    cmds = {"train": ["train", run.config, "--out", out, "--overwrite", *(o.format(**fill) for o in run.overrides)],
            "eval": ["eval", f"{out}/model.safetensors", "--data", run.config, "--out", f"{out}/eval", "--no-progress",
                     *(a.format(**fill) for a in run.eval_args)]}
    if run.infer_images:
        cmds["infer"] = ["infer", f"{out}/model.safetensors", *(str(work / p) for p in run.infer_images),
                         "--out", f"{out}/infer"]
    return cmds


def shown(argv: list[str], work: Path) -> str:
    """A command as the docs show it: the work folder written ``WORK``."""
    return "segzoo " + " ".join(argv).replace(str(work), "WORK")


def output_dir(run: Run, work: Path, drawn_by: str) -> Path:
    base = work / run.name
    return base if drawn_by == "train" else base / drawn_by


def measured(run: Run, work: Path) -> dict[str, float | str]:
    """The headline metric of the run: the trainer's (metrics.json) and the evaluation's."""
    train = json.loads((work / run.name / "metrics.json").read_text())
    ev = json.loads((work / run.name / "eval" / "metrics.json").read_text())["metrics"]
    out: dict[str, float | str] = {"metric": train["metric"], "value": round(float(train["best"]), 4),
                                   "steps": train["total_steps"], "train_seconds": train["train_seconds"]}
    for key in ("miou", "pixel_acc", "pr_map", "bbox_AP", "bbox_AP50"):
        if key in ev:
            out[f"eval_{key}"] = round(float(ev[key]), 4)
    return out


def shrink(sources: list[Path], dst: Path) -> None:
    """Copy PNGs (several: side by side, segzoo.visualize.side_by_side) as one palette PNG of COLORS colours."""
    import numpy as np
    from PIL import Image

    from segzoo.visualize import side_by_side

    images = [np.array(Image.open(s).convert("RGB")) for s in sources]
    if len(images) > 1:
        images = [side_by_side(images).permute(1, 2, 0).numpy()]
    with Image.fromarray(images[0]) as im:
        small = im.quantize(colors=COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    tmp = dst.with_suffix(".tmp.png")
    small.save(tmp, optimize=True)
    os.replace(tmp, dst)


def run_commands(run: Run, work: Path, log) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for kind, argv in commands(run, work).items():
        t = time.time()
        print(f"[{run.name}] {shown(argv, work)}", file=log, flush=True)
        subprocess.run([sys.executable, "-m", "segzoo.cli", *argv], cwd=ROOT, env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT)
        print(f"[{run.name}] {kind} done in {time.time() - t:.0f} s", file=log, flush=True)


def write_manifest(entries: dict[str, dict]) -> dict:
    """Write manifest.json (atomically), its pictures in the order of PICTURES."""
    manifest = {"generated_by": "python -m benchmarks.pictures",
                "machine": "2 shared CPU cores, one thread (OMP_NUM_THREADS=1)",
                "pictures": [entries[p.file] for p in PICTURES if p.file in entries]}
    tmp_path = MANIFEST.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp_path, MANIFEST)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="+", choices=[r.name for r in RUNS], help="re-run only these runs")
    p.add_argument("--work", type=Path, default=None, help="work folder for the runs (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="keep the runs already finished in --work (no re-run)")
    args = p.parse_args(argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    old = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"pictures": []}
    entries = {e["file"]: e for e in old["pictures"]}
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        for run in RUNS:
            if args.only and run.name not in args.only:
                continue
            if not (args.reuse and all((work / run.name / d / "metrics.json").exists() for d in ("", "eval"))):
                run_commands(run, work, sys.stdout)
            metric = measured(run, work)
            cmds = commands(run, work)
            for pic in PICTURES:
                if pic.run != run.name:
                    continue
                shrink([output_dir(run, work, pic.drawn_by) / s for s in pic.source], OUT_DIR / pic.file)
                entries[pic.file] = {
                    "file": pic.file, "caption": pic.caption, "run": run.name, "drawn_by": f"segzoo {pic.drawn_by}",
                    "command": shown(cmds[pic.drawn_by], work), "train_command": shown(cmds["train"], work),
                    "config": run.config, "config_sha256": sha256(ROOT / run.config), "measured": metric,
                    "data_licence": LICENCES[run.data], "bytes": (OUT_DIR / pic.file).stat().st_size}
            manifest = write_manifest(entries)  # after every run: a failed later run keeps these
    manifest = write_manifest(entries)
    print(f"wrote {MANIFEST} ({len(manifest['pictures'])} pictures, "
          f"{sum(e['bytes'] for e in manifest['pictures']) / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
