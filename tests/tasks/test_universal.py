"""The universal task: one set-prediction model scored as semantic, instance and panoptic from one forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import segzoo
from segzoo.data import MaskFolder, Shapes, ShapesPanoptic
from segzoo.data.formats.coco_panoptic import CocoPanoptic
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS, SEGMENTS
from segzoo.data.transforms import build_transforms
from segzoo.engine.evaluator import evaluate
from segzoo.metrics.panoptic import target_segments
from segzoo.tasks import UniversalTask, get_task, get_tasks
from segzoo.tasks.universal import collate_universal, segments_label_map, thing_rows

SMALL = {"num_train": 4, "num_val": 3, "size": 64}


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory):
    return ShapesPanoptic(tmp_path_factory.mktemp("pan") / "shapes_panoptic", "val", **SMALL,
                          transforms=build_transforms(SEGMENTS, False))


class Oracle(nn.Module):
    """A universal 'model' answering each image with its panoptic ground truth in all three forms."""

    task = "universal"
    tasks = ("semantic", "instance", "panoptic")

    def __init__(self, data) -> None:
        super().__init__()
        self.num_classes, self.num_stuff, self.num_things = data.num_classes, data.num_stuff, data.num_things
        self.answers = [data[i] for i in range(len(data))]
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        out = []
        for im in images:
            t = next(t for x, t in self.answers if x.shape == im.shape and torch.equal(x, im))
            label_map = segments_label_map(t)
            sem = torch.nn.functional.one_hot(label_map.clamp(max=self.num_classes - 1), self.num_classes)
            sem = sem.permute(2, 0, 1).float() * (label_map != 255)
            things = thing_rows(t, self.num_things)
            keep = ~things["iscrowd"].bool()
            seg, info = target_segments(t, self.num_things)
            out.append({"sem_seg": sem, "boxes": things["boxes"][keep].float(),
                        "scores": torch.ones(int(keep.sum())), "labels": things["labels"][keep],
                        "masks": things["masks"][keep].float(), "segments": seg,
                        "segments_info": [{**s, "score": 1.0} for s in info]})
        return out


def test_the_models_are_universal_and_list_their_three_tasks():
    m = segzoo.build("mask2former_resnet18_small", num_classes=4, num_stuff=1)
    assert m.task == m.spec.task == "universal" and isinstance(get_task(m), UniversalTask)
    assert [t.name for t in get_tasks(m)] == ["semantic", "instance", "panoptic"]
    assert {"mask2former_resnet50", "mask2former_swin_tiny", "eomt_vit_small", "eomt_vit_base",
            "eomt_vit_large"} <= set(segzoo.list_models(task="universal"))


def test_one_forward_gives_semantic_instance_and_panoptic():
    torch.manual_seed(0)
    m = segzoo.build("mask2former_resnet18_small", num_classes=4, num_stuff=1).eval()
    with torch.no_grad():
        (out,) = m(torch.rand(1, 3, 64, 48))
    assert out["sem_seg"].shape == (4, 64, 48)
    assert out["masks"].shape[1:] == (64, 48) and len(out["boxes"]) == len(out["scores"]) == len(out["labels"])
    assert bool((out["labels"] < 3).all())  # instances: thing classes only
    assert out["segments"].shape == (64, 48) and isinstance(out["segments_info"], list)


def test_a_perfect_model_scores_one_on_all_three_from_panoptic_data(panoptic):
    result = evaluate(Oracle(panoptic), panoptic, batch_size=2, num_pictures=1)
    assert result["task"] == "universal" and set(result["parts"]) == {"semantic", "instance", "panoptic"}
    m = result["metrics"]
    for key in ("pq", "sq", "rq", "miou", "pixel_acc", "segm_AP", "bbox_AP"):
        assert m[key] == pytest.approx(1.0), key
    assert m["score"] == m["pq"]
    text = get_task("universal").format_results(result)
    assert "[panoptic]" in text and "[instance]" in text and "[semantic]" in text and "circle" in text
    assert result["pictures"][0].shape[0] == 3


def test_a_trained_nothing_scores_below_one(panoptic):
    torch.manual_seed(0)
    m = segzoo.build("mask2former_resnet18_small", num_classes=panoptic.num_classes, num_stuff=panoptic.num_stuff)
    m = m.eval()
    metrics = evaluate(m, panoptic, batch_size=2)["metrics"]
    assert metrics["pq"] < 0.5 and metrics["miou"] < 0.9 and metrics["score"] == metrics["pq"]


def test_semantic_data_is_scored_with_miou(tmp_path):
    shapes = Shapes(tmp_path / "s", "val", num_train=2, num_val=2, size=64, target=CLASS_MAP,
                    transforms=build_transforms(CLASS_MAP, False))
    torch.manual_seed(0)
    m = segzoo.build("eomt_vit_tiny_test", num_classes=4)
    result = evaluate(m, shapes)
    assert set(result["parts"]) == {"semantic"} and result["metrics"]["score"] == result["metrics"]["miou"]
    assert "pq" not in result["metrics"]


def test_the_task_reads_the_richest_target_a_reader_offers():
    task = get_task("universal")
    assert task.data_target(ShapesPanoptic.targets) is SEGMENTS and task.data_target(CocoPanoptic.targets) is SEGMENTS
    assert task.data_target(Shapes.targets) is INSTANCE_MASKS
    assert task.data_target(MaskFolder.targets) is CLASS_MAP
    with pytest.raises(ValueError, match="panoptic, instance or semantic"):
        task.data_target((BOXES,))
    assert get_task("semantic").data_target(Shapes.targets) is CLASS_MAP  # the other tasks keep their own


def test_label_maps_train_as_one_mask_per_class_present():
    """The collate stacks label maps, the model turns them into set targets; ignored pixels belong to no mask."""
    batch = [(torch.rand(3, 32, 32), torch.randint(0, 3, (32, 32))), (torch.rand(3, 32, 32), torch.full((32, 32), 255))]
    images, labels = collate_universal(batch)
    assert images.shape == (2, 3, 32, 32) and labels.shape == (2, 32, 32)
    torch.manual_seed(0)
    m = segzoo.build("eomt_vit_tiny_test", num_classes=3)
    losses = m(images, labels)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    obj = [(torch.rand(3, 32, 32), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                                    "masks": torch.zeros(0, 32, 32)})]
    imgs, targets = collate_universal(obj)
    assert isinstance(imgs, list) and isinstance(targets, list)


def test_the_task_drives_the_eomt_mask_annealing():
    m = segzoo.build("eomt_vit_tiny_test", num_classes=3)  # 2 masked blocks: annealed in quarters 1 and 2
    task = get_task(m)
    task.before_step(m, 0, 100)
    assert m.attn_mask_probs.tolist() == [1.0, 1.0]
    task.before_step(m, 40, 100)
    p = m.attn_mask_probs.tolist()
    assert 0 < p[0] < 1 and p[1] == 1.0
    task.before_step(m, 99, 100)
    assert m.attn_mask_probs.tolist() == [0.0, 0.0]
    m.exportable()  # finished: a plain ViT, exportable
    task.before_step(nn.Linear(1, 1), 5, 10)  # a model without a schedule: nothing to drive


@pytest.mark.parametrize("layout, kind", [("panoptic", SEGMENTS), ("instances", INSTANCE_MASKS),
                                          ("label maps", CLASS_MAP)])
def test_data_type_auto_gives_a_universal_model_the_richest_target(tmp_path, layout, kind):
    """``data.type: auto`` recognises the layout, then the universal task reads its richest target: COCO
    panoptic gives segments, COCO instances instance masks, a mask folder label maps (before, the
    task saw no reader under ``auto`` and the readers refused its target)."""
    import shutil

    from segzoo.config import load_config
    from segzoo.data.synthetic import shapes, shapes_panoptic
    from segzoo.engine.build import build_split

    if layout == "panoptic":
        root = shapes_panoptic.generate(tmp_path / "d", num_train=2, num_val=1, size=32) / "train"
        over = ["model.num_classes=6", "model.num_stuff=3"]
    else:
        root = shapes.generate(tmp_path / "d", num_train=2, num_val=1, size=32) / "train"
        over = ["model.num_classes=3", "model.num_stuff=0"]
        if layout == "instances":
            shutil.rmtree(root / "masks")  # COCO instances only
        else:
            (root / "instances.json").unlink()  # images/ + masks/: a mask folder
            over = ["model.num_classes=4", "model.num_stuff=0"]
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "mask2former.yaml",
                      ["data.type=auto", f"data.train={{root: {root}}}", "data.val=null", *over])
    data = build_split(cfg, "train", "universal")
    assert data.target == kind
    target = data[0][1]
    assert isinstance(target, dict) == (kind is not CLASS_MAP)
