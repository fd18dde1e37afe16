import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segzoo
from segzoo.data import build_dataset
from segzoo.metrics import SegmentationMetric

ROOT = Path(__file__).resolve().parents[1]
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
    ds = build_dataset({"type": "shapes", "root": str(workdir / "shapes"),
                        "val": {"num_train": 2, "num_val": 3, "size": 64}}, "val", "semantic", train=False)
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


def test_infer_reports_missing_inputs(workdir):
    model = segzoo.build("fcn_resnet50", num_classes=2, backbone="resnet18")
    ckpt = workdir / "tiny.safetensors"
    segzoo.save(model, ckpt)
    with pytest.raises(FileNotFoundError, match="no such image"):
        _tool("infer")([str(ckpt), str(workdir / "nope.png"), "--out", str(workdir / "x")])


def test_tool_metrics_equal_the_trainer_evaluator(workdir):
    from torch.utils.data import DataLoader

    from segzoo.data import collate_semantic
    from segzoo.engine.evaluator import evaluate as engine_evaluate
    from segzoo.predict import evaluate

    ds = build_dataset({"type": "shapes", "root": str(workdir / "shapes"),
                        "val": {"num_train": 2, "num_val": 3, "size": 64}}, "val", "semantic", train=False)
    model = segzoo.build("fcn_resnet50", num_classes=4, backbone="resnet18").eval()
    ours = evaluate(model, ds)["metrics"]
    theirs = engine_evaluate(model, DataLoader(ds, batch_size=2, collate_fn=collate_semantic), "semantic", 4)
    for key in ("pixel_acc", "mean_acc", "fwiou"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9)
    np.testing.assert_allclose(ours["iou"], theirs["iou"], atol=1e-9)
