import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segzoo
from segzoo.data import build_dataset
from segzoo.data.targets import CLASS_MAP
from segzoo.metrics import SegmentationMetric
from tests.data_layouts import data_config

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")


def _tool(name):
    return runpy.run_path(str(ROOT / "tools" / f"{name}.py"), run_name=f"{name}_cli")["main"]


def _write_config(path, data_root, model=None):
    lines = []
    if model:
        lines += ["model:", f"  name: {model}", "  backbone: resnet18"]
    lines += [
        "data:", "  type: shapes", f"  root: {data_root}",
        "  val: {num_train: 2, num_val: 3, size: 64}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tools")


def test_eval_and_infer_semantic(workdir, capsys):
    cfg = _write_config(workdir / "sem.yaml", workdir / "shapes", model="fcn_resnet50")
    model = segzoo.build("fcn_resnet50", num_classes=4, backbone="resnet18").eval()
    ckpt = workdir / "run" / "model.safetensors"
    ckpt.parent.mkdir()
    classes = ["background", "circle", "square", "triangle"]
    segzoo.save(model, ckpt, classes=classes)

    assert _tool("eval")([str(ckpt), "--data", str(cfg), "--pictures", "2", "--no-progress"]) == 0
    out = ckpt.parent / "eval"
    printed = capsys.readouterr().out
    assert "miou" in printed and "triangle" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and metrics["class_names"] == classes
    # the tool's numbers are those of a direct computation on the same images
    ds = build_dataset(data_config({"type": "shapes", "root": str(workdir / "shapes"),
                                    "val": {"num_train": 2, "num_val": 3, "size": 64}}), "val", CLASS_MAP, train=False)
    ref = SegmentationMetric(4)
    with torch.no_grad():
        for i in range(len(ds)):
            image, mask = ds[i]
            ref.update(model(image.as_subclass(torch.Tensor)[None]), mask.as_subclass(torch.Tensor)[None])
    expected = ref.compute()
    assert metrics["metrics"]["pixel_acc"] == pytest.approx(expected["pixel_acc"], abs=1e-9)
    got_miou, want_miou = metrics["metrics"]["miou"], expected["miou"]
    assert (got_miou is None and np.isnan(want_miou)) or got_miou == pytest.approx(want_miou, abs=1e-9)
    rows = (out / "confusion.csv").read_text().strip().splitlines()
    counts = np.array([[int(v) for v in r.split(",")[1:]] for r in rows[1:]])
    assert np.array_equal(counts, ref.confusion.numpy())
    for name in ("confusion.png", "pr_curves.png", "predictions_000.png", "predictions_001.png"):
        assert Image.open(out / name).size[0] > 100
    assert not (out / "predictions_002.png").exists()

    # infer: a folder plus a single file
    imgs = workdir / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray((np.random.rand(40 + 10 * i, 56, 3) * 255).astype(np.uint8)).save(imgs / f"im{i}.png")
    single = workdir / "single.jpg"
    Image.fromarray((np.random.rand(48, 48, 3) * 255).astype(np.uint8)).save(single)
    preds = workdir / "preds"
    assert _tool("infer")([str(ckpt), str(imgs), str(single), "--out", str(preds), "--tile", "32"]) == 0
    assert sorted(p.name for p in preds.iterdir()) == [
        "im0_mask.png", "im0_overlay.png", "im1_mask.png", "im1_overlay.png", "single_mask.png", "single_overlay.png"]
    mask = np.array(Image.open(preds / "im1_mask.png"))
    expected_mask = segzoo.predict(model, imgs / "im1.png", tile=32)["mask"].numpy()
    assert mask.shape == (50, 56) and np.array_equal(mask, expected_mask)
    overlay = Image.open(preds / "im1_overlay.png")
    assert overlay.size[1] == 50 and overlay.size[0] > 56  # legend panel from the checkpoint's classes


def test_eval_and_infer_detection_with_data_only_config(workdir, capsys):
    cfg = _write_config(workdir / "det.yaml", workdir / "shapes")  # no model section
    model = segzoo.build("centernet_resnet18", num_classes=3).eval()
    ckpt = workdir / "det.safetensors"
    segzoo.save(model, ckpt, classes=["circle", "square", "triangle"])
    out = workdir / "det_eval"
    argv = [str(ckpt), "--data", str(cfg), "data.val.num_val=2", "--out", str(out), "--pictures", "1",
            "--no-progress"]
    assert _tool("eval")(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["task"] == "detection"
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl", "bbox_pr_map50"):
        assert key in metrics["metrics"]
    assert set(metrics["metrics"]["bbox_per_class"]) == {"circle", "square", "triangle"}
    assert (out / "pr_curves.png").is_file() and (out / "predictions_000.png").is_file()
    assert "Average Precision" in capsys.readouterr().out

    img = workdir / "shapes" / "val" / "images"
    first = sorted(img.iterdir())[0]
    preds = workdir / "det_preds"
    assert _tool("infer")([str(ckpt), str(first), "--out", str(preds), "--score-thresh", "0.0"]) == 0
    dets = json.loads((preds / f"{first.stem}.json").read_text())
    ref = segzoo.predict(model, first)
    assert len(dets["boxes"]) == len(ref["boxes"]) and set(dets["classes"]) <= {"circle", "square", "triangle"}
    assert (preds / f"{first.stem}_overlay.png").is_file()


def test_infer_reports_missing_inputs(workdir, capsys):
    model = segzoo.build("fcn_resnet50", num_classes=2, backbone="resnet18")
    ckpt = workdir / "tiny.safetensors"
    segzoo.save(model, ckpt)
    assert _tool("infer")([str(ckpt), str(workdir / "nope.png"), "--out", str(workdir / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no such image file or folder") and "nope.png" in err[0]


def test_infer_skips_unreadable_files_with_a_warning_and_a_count(workdir, capsys):
    model = segzoo.build("fcn_resnet50", num_classes=2, backbone="resnet18")
    ckpt = workdir / "skip.safetensors"
    segzoo.save(model, ckpt)
    imgs = workdir / "mixed"
    imgs.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray((np.random.rand(24, 32, 3) * 255).astype(np.uint8)).save(imgs / name)
    (imgs / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")  # a broken file between two good ones
    good = (imgs / "a.png").read_bytes()
    (imgs / "d.jpg").write_bytes(good[: len(good) // 3])  # truncated
    out = workdir / "mixed_preds"
    assert _tool("infer")([str(ckpt), str(imgs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: skipped") == 2 and "b.png" in err and "d.jpg" in err
    assert "wrote 2 predictions" in err and "skipped 2 unreadable files" in err
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png", "c_mask.png", "c_overlay.png"]


def test_eval_refuses_data_of_another_task_in_one_line(workdir, capsys):
    (workdir / "mf" / "im").mkdir(parents=True)
    (workdir / "mf" / "gt").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(workdir / "mf" / "im" / f"{i}.png")
        Image.fromarray(np.ones((32, 32), np.uint8)).save(workdir / "mf" / "gt" / f"{i}.png")
    cfg = workdir / "mf.yaml"
    cfg.write_text(f"data: {{type: mask_folder, val: {{images: {workdir / 'mf' / 'im'}, "
                   f"masks: {workdir / 'mf' / 'gt'}}}}}\n")
    ckpt = workdir / "det_task.safetensors"
    segzoo.save(segzoo.build("centernet_resnet18", num_classes=3), ckpt)
    assert _tool("eval")([str(ckpt), "--data", str(cfg), "--no-progress", "--out", str(workdir / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "semantic masks" in err[0] and "detection model" in err[0], err


@pytest.mark.parametrize(("model", "keys"), [
    ({"name": "unet", "num_classes": 4, "channels": [4, 8, 16, 32, 64]},
     ("pixel_acc", "mean_acc", "miou", "fwiou", "mdice", "iou", "dice", "acc", "precision")),
    ({"name": "centernet_resnet18", "num_classes": 3}, ("bbox_AP", "bbox_AP50", "bbox_AR100", "bbox_per_class")),
], ids=["semantic", "detection"])
def test_training_log_metrics_equal_the_eval_command(model, keys, workdir, tmp_path):
    """One evaluate: the metrics logged at the last step equal `segzoo eval` on the saved checkpoint."""
    import yaml

    from segzoo.cli import main

    shapes = {"num_train": 8, "num_val": 5, "size": 64}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": model,
        "data": {"type": "shapes", "root": str(workdir / "shapes_eq"), "train": shapes, "val": shapes,
                 "batch_size": 2, "val_batch_size": 3, "num_workers": 0, "check": False,
                 "augment": {"size": 64, "scale": [0.75, 1.25]}},
        "train": {"max_steps": 2, "lr": 0.01, "device": "cpu", "progress": False, "tensorboard": False},
        "eval": {"num_pictures": 0}}))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    logged = [r for r in logged if r["type"] == "eval"][-1]
    assert logged["step"] == 2
    assert main(["eval", str(run / "model.safetensors"), "--data", str(cfg), "--out", str(tmp_path / "eval"),
                 "--pictures", "0", "--no-progress"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["num_images"] == 5
    for key in keys:
        assert evaluated["metrics"][key] == logged[key], key  # equal, not close: the same code and batches
