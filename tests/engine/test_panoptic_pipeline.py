"""Panoptic end to end: the config through `segzoo train`, PQ through the one evaluate, `segzoo eval`,
`segzoo infer` files, and the pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import segzoo
from segzoo.data import ShapesPanoptic, read_panoptic
from segzoo.data.formats.coco_panoptic import ids_to_rgb
from segzoo.engine.evaluator import evaluate
from segzoo.metrics.panoptic import target_segments
from segzoo.visualize import draw_panoptic

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"num_train": 4, "num_val": 3, "size": 64}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pan") / "shapes_panoptic"
    return ShapesPanoptic(root, "val", **SMALL)


class Oracle(nn.Module):
    """A panoptic 'model' that answers each image with its ground truth, or with everything void."""

    task = "panoptic"

    def __init__(self, data, void: bool = False) -> None:
        super().__init__()
        self.num_classes, self.num_stuff, self.num_things = data.num_classes, data.num_stuff, data.num_things
        self.answers = [(image, target) for image, target in (data[i] for i in range(len(data)))]
        self.void = void
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        out = []
        for im in images:
            target = next(t for x, t in self.answers if x.shape == im.shape and torch.equal(x, im))
            seg, info = target_segments(target, self.num_things)
            info = [{**s, "score": 1.0} for s in info]
            out.append({"segments": seg * 0 if self.void else seg, "segments_info": [] if self.void else info})
        return out


def test_evaluate_scores_pq_sq_rq(shapes):
    perfect = evaluate(Oracle(shapes), shapes, batch_size=2, num_pictures=1)
    assert perfect["task"] == "panoptic" and perfect["num_images"] == len(shapes)
    m = perfect["metrics"]
    for key in ("pq", "sq", "rq", "pq_th", "pq_st", "sq_th", "rq_st"):
        assert m[key] == pytest.approx(1.0), key
    assert set(m["per_class"]) <= set(shapes.classes) and "PQ" in perfect["coco_summary"]
    assert perfect["pictures"][0].shape[0] == 3
    void = evaluate(Oracle(shapes, void=True), shapes, batch_size=2)["metrics"]
    assert void["pq"] == 0 and void["rq"] == 0


def test_draw_panoptic_colours_things_apart_and_stuff_per_class():
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    seg = torch.zeros(20, 30, dtype=torch.int32)
    seg[:, 10:20], seg[:, 20:], seg[:10, :10], seg[10:15, :10] = 1, 2, 3, 4  # rows 15-19 of the left: void
    info = [{"id": 1, "category": 0, "is_thing": True, "score": 0.9},
            {"id": 2, "category": 0, "is_thing": True, "score": 0.8},
            {"id": 3, "category": 2, "is_thing": False}, {"id": 4, "category": 2, "is_thing": False}]
    pic = draw_panoptic(image, seg, info, legend=False, alpha=1.0)
    assert pic.shape == (3, 20, 30)
    assert not torch.equal(pic[:, 15, 15], pic[:, 15, 25])  # two instances of one class: two colours
    assert torch.equal(pic[:, 5, 5], pic[:, 12, 5])  # two segments of one stuff class: its colour
    assert not torch.equal(pic[:, 5, 5], image[:, 5, 5])
    assert torch.equal(pic[:, 18, 5], image[:, 18, 5])  # void left as it is
    with_legend = draw_panoptic(image, seg, info, ["circle", "square", "sky"])
    assert with_legend.shape[1] == 20 and with_legend.shape[2] > 30
    with pytest.raises(ValueError, match="H x W"):
        draw_panoptic(image, seg[:10], info)


def test_config_trains_evaluates_and_infers(tmp_path, capsys):
    """configs/panoptic_fpn.yaml through `segzoo train`; `segzoo eval` gives the logged PQ; `segzoo infer`
    writes the overlay, a COCO-panoptic PNG of predict's segments and their json."""
    from segzoo.cli import main

    data = [f"data.root={tmp_path / 'shapes_panoptic'}", f"data.train={SMALL}", f"data.val={SMALL}",
            "data.num_workers=0", "data.augment.size=64", "model.combine_score_thresh=0.0"]
    run = tmp_path / "run"
    assert main(["train", str(ROOT / "configs" / "panoptic_fpn.yaml"), "--out", str(run), "train.max_steps=2",
                 "train.device=cpu", "train.progress=false", "train.tensorboard=false", "eval.num_pictures=1",
                 *data]) == 0
    out = capsys.readouterr().out
    assert "best pq" in out
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    logged = [r for r in logged if r["type"] == "eval"][-1]
    assert (run / "predictions.png").is_file()

    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"data: {{type: shapes_panoptic, root: {tmp_path / 'shapes_panoptic'}, val: {SMALL}}}\n")
    assert main(["eval", str(run / "model.safetensors"), "--data", str(cfg), "--out", str(tmp_path / "eval"),
                 "--pictures", "1", "--no-progress"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["task"] == "panoptic" and evaluated["num_images"] == SMALL["num_val"]
    for key in ("pq", "sq", "rq", "pq_th", "pq_st"):
        assert evaluated["metrics"][key] == logged[key], key
    assert "PQ" in capsys.readouterr().out

    model = segzoo.load(run / "model.safetensors")
    image = tmp_path / "shapes_panoptic" / "val" / "images" / f"{SMALL['num_train']:06d}.png"
    preds = tmp_path / "preds"
    assert main(["infer", str(run / "model.safetensors"), str(image), "--out", str(preds)]) == 0
    ref = segzoo.predict(model, image)
    ids = read_panoptic(preds / f"{image.stem}_panoptic.png")
    assert np.array_equal(ids, ref["segments"].numpy())
    info = json.loads((preds / f"{image.stem}.json").read_text())["segments_info"]
    assert [s["id"] for s in info] == [s["id"] for s in ref["segments_info"]]
    assert all(s["class"] in model.classes for s in info)
    assert Image.open(preds / f"{image.stem}_overlay.png").size[1] == SMALL["size"]


def test_ids_to_rgb_refuses_ids_a_png_cannot_hold():
    with pytest.raises(ValueError, match="256"):
        ids_to_rgb(torch.tensor([[256**3]]))
