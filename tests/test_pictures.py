"""Pictures and inference files show what a model found: low-scoring detections, class names, legends, titles."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import segzoo
from segzoo import visualize as vis
from segzoo.engine import evaluate
from segzoo.engine.evaluator import save_predictions_png
from segzoo.infer_files import write_prediction

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["circle", "square", "triangle"]


class Fixed(nn.Module):
    """A detection model that returns the same detections for every image."""

    task = "instance"

    def __init__(self, det: dict) -> None:
        super().__init__()
        self.num_classes, self.det = 3, det
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return [{k: v.clone() for k, v in self.det.items()} for _ in images]


def _weak_detections(h=64, w=64):
    """Two detections, the best at 0.49: a freshly trained CenterNet's picture at threshold 0.5."""
    masks = torch.zeros(2, h, w)
    masks[0, 8:28, 8:28] = 0.9
    masks[1, 36:60, 36:60] = 0.9
    return {"boxes": torch.tensor([[8.0, 8, 28, 28], [36.0, 36, 60, 60]]), "scores": torch.tensor([0.49, 0.2]),
            "labels": torch.tensor([0, 2]), "masks": masks}


def _data(n=1, h=64, w=64):
    target = {"boxes": torch.tensor([[8.0, 8, 28, 28]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, h, w, dtype=torch.uint8)}
    target["masks"][0, 8:28, 8:28] = 1
    return [(torch.full((3, h, w), 0.5), target) for _ in range(n)]


def _dark(a: torch.Tensor) -> torch.Tensor:
    return (a.int().sum(0) < 300)  # text pixels on the white title band


def test_best_detections_below_the_threshold_are_drawn_lighter():
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    det = _weak_detections()
    assert vis.draw_instances(img, det, NAMES, score_thresh=0.5).sum() == 0  # the threshold alone hides both
    out = vis.draw_instances(img, det, NAMES, score_thresh=0.5, top_k=3)
    assert out[:, 15, 15].sum() > 0 and out[:, 50, 50].sum() > 0
    confident = {**det, "scores": torch.tensor([0.9, 0.2])}
    keep, weak = vis.shown_instances(confident["scores"], 0.5, top_k=2)
    assert keep.tolist() == [True, False] and weak.tolist() == [False, True]
    # a weak box is drawn 1 pixel wide, a confident one `width` pixels
    strong = vis.draw_instances(img, {**det, "scores": torch.tensor([0.9, 0.9]), "masks": det["masks"] * 0}, NAMES)
    light = vis.draw_instances(img, {**det, "masks": det["masks"] * 0}, NAMES, top_k=3)
    assert strong[:, 40, 37].sum() > 0 and light[:, 40, 37].sum() == 0


def test_evaluation_panels_show_weak_detections_a_legend_and_the_threshold():
    det = _weak_detections()
    result = evaluate(Fixed(det), _data(), num_pictures=1, class_names=NAMES, score_threshold=0.5)
    panel = result["pictures"][0]
    w, gap = 64, 4
    title_h = panel.shape[1] - 64
    assert title_h > 16  # the long prediction title wrapped into several lines instead of being cut off
    body = panel[:, title_h:]
    image, pred = body[:, :, :w], body[:, :, w + gap: 2 * w + gap]
    assert not torch.equal(pred[:, 16:20, 16:20], image[:, 16:20, 16:20])  # the 0.49 detection is drawn
    legend = body[:, :, 3 * w + 3 * gap:]
    assert legend.shape[-1] > 20 and _dark(legend).any()  # a legend column with names
    titles = panel[:, :title_h]
    for gap_x in (w, 2 * w + gap, 3 * w + 2 * gap):  # no title runs into the gap after its column
        assert not _dark(titles[:, :, gap_x: gap_x + gap]).any()
    for x0 in (0, w + gap, 2 * w + 2 * gap):
        assert _dark(titles[:, :, x0: x0 + w]).any()


def test_side_by_side_titles_fit_small_images():
    imgs = [torch.zeros(3, 64, 64, dtype=torch.uint8)] * 3 + [torch.full((3, 64, 40), 255, dtype=torch.uint8)]
    panel = vis.side_by_side(imgs, ["image", "prediction, score >= 0.5", "ground truth", ""], gap=4)
    title_h = panel.shape[1] - 64
    for x in (64, 132, 200):
        assert not _dark(panel[:, :title_h, x: x + 4]).any(), x
    assert _dark(panel[:, :title_h, 136:200]).any()  # "ground truth" written in its column


def test_training_picture_has_the_same_panels(tmp_path):
    save_predictions_png(Fixed(_weak_detections()), _data(2), tmp_path / "p.png", class_names=NAMES, num_images=2)
    pic = np.array(Image.open(tmp_path / "p.png"))
    assert pic.shape[0] > 2 * 64 and pic.shape[1] > 3 * 64 + 8 + 20  # two rows, a legend column


def test_inference_json_keeps_low_scores_and_the_overlay_says_the_threshold(tmp_path):
    det = _weak_detections()
    det["scores"] = torch.tensor([0.3, 0.02])
    files = write_prediction(det, torch.rand(3, 64, 64), tmp_path, "im", NAMES)
    out = json.loads((tmp_path / "im.json").read_text())
    assert out["scores"] == [0.3] and out["classes"] == ["circle"] and out["keep_threshold"] == 0.05
    assert out["score_threshold"] == 0.5 and len(out["boxes"]) == len(out["labels"]) == 1
    overlay = np.array(Image.open(tmp_path / "im_overlay.png"))
    assert overlay.shape[0] > 64  # the caption under the image
    assert np.array(Image.open(tmp_path / "im_masks.png")).max() == 1 and len(files) == 3
    write_prediction(det, torch.rand(3, 64, 64), tmp_path, "low", NAMES, score_thresh=0.01)
    assert json.loads((tmp_path / "low.json").read_text())["scores"] == [0.3, 0.02]  # everything drawn is kept


def test_infer_prints_class_names(tmp_path, capsys):
    infer = runpy.run_path(str(ROOT / "tools" / "infer.py"), run_name="infer_cli")["main"]
    model = segzoo.build("unet", num_classes=3, channels=[4, 8, 16, 32, 64])
    ckpt = tmp_path / "m.safetensors"
    segzoo.save(model, ckpt, classes=["background", "leaf", "stem"])
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert infer([str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[0]
    found = segzoo.predict(segzoo.load(ckpt), tmp_path / "a.png")["mask"].unique().tolist()
    names = ["background", "leaf", "stem"]
    assert line.startswith(f"{tmp_path / 'a.png'}: {', '.join(names[k] for k in found)} ->")


@pytest.mark.parametrize("task", ["detection"])
def test_infer_detection_line_names_classes_and_scores(tmp_path, capsys, task, monkeypatch):
    from segzoo import cli

    det = _weak_detections()
    model = Fixed({k: v for k, v in det.items() if k != "masks"})
    model.task, model.classes = task, NAMES
    monkeypatch.setattr("segzoo.registry.load", lambda *a, **k: model)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    assert cli.main(["infer", "ckpt.safetensors", str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 0
    line = capsys.readouterr().out.strip()
    assert "0 detections >= 0.5 (best: circle 0.49); 2 in the json (>= 0.05)" in line
