"""The task objects (segzoo.tasks): each metric through reset/update/compute gives the numbers of the metric
classes fed directly (what evaluate did before the task objects), the lookup refuses unknown tasks, and no
module outside the task objects compares task names."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import torch

from segzoo.metrics import CocoEvaluator, DetectionPRCurve, PanopticQuality, PRCurve, SegmentationMetric
from segzoo.spec import TASK_TRAITS, TASKS
from segzoo.tasks import TASK_OBJECTS, Labels, get_task, get_tasks

ROOT = Path(__file__).resolve().parents[1]


class _Model:
    """What the task objects read from a model: ``task``, ``num_stuff``."""

    def __init__(self, task, num_stuff=0, tasks=None):
        self.task, self.num_stuff = task, num_stuff
        if tasks is not None:
            self.tasks = tasks


def _same(a, b):
    """Equal metric dicts, NaN equal to NaN."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            _same(x, y)
        elif isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), k
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), k
        else:
            assert x == y, k


def test_semantic_metric_equals_the_metric_classes_and_resets():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 3, 6, 7, generator=g).softmax(1)
    targets = torch.randint(0, 3, (4, 6, 7), generator=g)
    targets[0, 0] = 255  # ignored
    items = [(i, torch.rand(3, 6, 7), targets[i]) for i in range(4)]
    metric = get_task("semantic").metric(_Model("semantic"), items, Labels(3), curves=True)
    metric.update(items[:1], torch.rand(1, 3, 6, 7))  # forgotten by reset
    metric.reset()
    metric.update(items[:2], probs[:2])
    metric.update(items[2:], probs[2:])
    got = metric.compute()
    ref, pr = SegmentationMetric(3), PRCurve(3)
    ref.update(probs.argmax(1), targets)
    pr.update(probs, targets)
    assert torch.equal(got["confusion"], ref.confusion)
    want = {**ref.compute(), "pr_map": pr.compute()["map"]}
    _same(got["metrics"], want)
    assert got["pr_curves"]["map"] == want["pr_map"]


def _detections(g, n, h=32, w=32, masks=False):
    xy = torch.rand(n, 2, generator=g) * 16
    boxes = torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 12], 1)
    out = {"boxes": boxes, "labels": torch.randint(0, 2, (n,), generator=g)}
    if masks:
        m = torch.zeros(n, h, w)
        for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            m[k, y0:y1, x0:x1] = 1
        out["masks"] = m
    return out


@pytest.mark.parametrize("task", ["detection", "instance"])
def test_coco_metric_equals_coco_evaluator(task):
    g = torch.Generator().manual_seed(1)
    instance = task == "instance"
    targets = [_detections(g, 3, masks=instance) for _ in range(3)]
    preds = []
    for t in targets:  # jittered copies of the truth plus a false positive
        p = _detections(g, 1, masks=instance)
        preds.append({"boxes": torch.cat([t["boxes"] + torch.rand(3, 4, generator=g), p["boxes"]]),
                      "labels": torch.cat([t["labels"], p["labels"]]),
                      "scores": torch.rand(4, generator=g),
                      **({"masks": torch.cat([t["masks"], p["masks"]])} if instance else {})})
    items = [(i, torch.rand(3, 32, 32), t) for i, t in enumerate(targets)]
    names = ["a", "b"]
    metric = get_task(task).metric(_Model(task), items, Labels(2, names), curves=True)
    metric.reset()
    metric.update(items[:2], preds[:2])
    metric.update(items[2:], preds[2:])
    got = metric.compute()
    ref = CocoEvaluator(2, ("bbox", "segm") if instance else ("bbox",), class_names=names)
    pr = DetectionPRCurve(2)
    full = [{**t, "image_id": i, "size": (32, 32)} for i, t in enumerate(targets)]
    ref.update(preds, full, [None] * 3)
    pr.update(preds, full)
    _same(got["metrics"], {**ref.compute(), "bbox_pr_map50": pr.compute()["map"]})
    untimed = [re.sub(r"\(t=[0-9.]+s\)", "", s) for s in (got["coco_summary"], ref.summary)]
    assert untimed[0] == untimed[1] and got["metrics"]["bbox_AP"] > 0


def test_panoptic_metric_equals_panoptic_quality():
    g = torch.Generator().manual_seed(2)
    items, preds = [], []
    for i in range(3):
        seg = torch.randint(0, 3, (8, 8), generator=g)  # 3 segments: 2 things, 1 stuff
        masks = torch.stack([seg == k for k in range(3)]).to(torch.uint8)
        items.append((i, torch.rand(3, 8, 8), {"masks": masks, "labels": torch.tensor([0, 1, 2])}))
        noisy = torch.where(torch.rand(8, 8, generator=g) < 0.2, torch.zeros_like(seg), seg + 1).int()
        preds.append({"segments": noisy, "segments_info": [{"id": k + 1, "category": k} for k in range(3)]})
    names = ["car", "person", "road"]
    metric = get_task("panoptic").metric(_Model("panoptic", num_stuff=1), items, Labels(3, names))
    metric.reset()
    metric.update(items, preds)
    got = metric.compute()
    ref = PanopticQuality(3, 1, names)
    ref.update(preds, [{**t, "image_id": i} for i, _, t in items])
    _same(got["metrics"], ref.compute())
    assert got["coco_summary"] == ref.summary and "pr_curves" not in got


def test_get_task_from_a_name_a_model_or_a_task():
    for name in TASKS:
        task = get_task(name)
        assert task.name == name and get_task(_Model(name)) is task and get_task(task) is task
        assert task.traits is TASK_TRAITS[name] and task.primary in task.metric_names()
    assert tuple(TASK_OBJECTS) == TASKS == tuple(TASK_TRAITS)
    universal = _Model("panoptic", tasks=("semantic", "instance", "panoptic"))
    assert [t.name for t in get_tasks(universal)] == ["semantic", "instance", "panoptic"]
    assert get_task(universal).name == "panoptic" and get_tasks(_Model("semantic")) == (get_task("semantic"),)


def test_unknown_task_is_refused_clearly():
    with pytest.raises(ValueError, match=r"unknown task 'depth'; expected one of semantic, detection, instance, "):
        get_task("depth")
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        get_task(_Model("depth"))
    with pytest.raises(TypeError, match="task name, a Task or a model"):
        get_task(3)


def test_primary_metric_and_summary_line():
    inst = get_task("instance")
    assert inst.primary_metric("auto") == "segm_AP" and inst.primary_metric("bbox_AP50") == "bbox_AP50"
    with pytest.raises(Exception, match="did you mean 'segm_AP'"):
        inst.primary_metric("segm_ap")
    line = get_task("semantic").summary_line({"miou": 0.5, "pixel_acc": 0.9, "mdice": 0.25}, "mdice")
    assert line == "mdice=0.2500, miou=0.5000, pixel_acc=0.9000"


def _task_name_comparisons(source: str, where: str) -> list[str]:
    """``x == "semantic"``, ``task in ("instance", ...)`` and the like: a Compare with a task name constant."""
    def names(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*map(names, node.elts)) if node.elts else set()
        return set()

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and set(TASKS) & set().union(*map(names, [node.left, *node.comparators])):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_task_name_comparison_outside_the_task_objects():
    excluded = ("segzoo/tasks/",)  # segzoo/data/ included: it decides by target kinds (tests/data/test_target_kinds.py)
    found = []
    for path in sorted((ROOT / "segzoo").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(excluded):
            found += _task_name_comparisons(path.read_text(encoding="utf-8"), rel)
    assert not found, "ask segzoo.tasks.get_task(...) instead:\n" + "\n".join(found)
    caught = 'if model.task == "semantic": pass\nif task not in ("instance", "panoptic"): pass\nif x != "b": pass\n'
    assert len(_task_name_comparisons(caught, "example")) == 2


def test_collate_and_transform_presets():
    from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS, SEGMENTS
    from segzoo.data.transforms import build_transforms

    semantic, panoptic = get_task("semantic"), get_task("panoptic")
    pairs = [(torch.rand(3, 4, 5), torch.zeros(4, 5)), (torch.rand(3, 6, 3), torch.ones(6, 3))]
    images, masks = semantic.collate(pairs)
    assert images.shape == (2, 3, 6, 5) and int(masks[0, 5, 0]) == 255 and int(masks[1, 0, 4]) == 255
    images, targets = panoptic.collate([(torch.rand(3, 4, 5), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)})])
    assert isinstance(images, list) and targets[0]["labels"].dtype == torch.int64
    assert repr(panoptic.transforms(train=False)) == repr(build_transforms(SEGMENTS, train=False))
    assert [get_task(t).target for t in ("semantic", "instance", "detection", "panoptic")] == \
        [CLASS_MAP, INSTANCE_MASKS, BOXES, SEGMENTS]
    with pytest.raises(ValueError, match="applies to semantic models only"):
        get_task("instance").transforms(train=True, cat_max_ratio=0.75)
    with pytest.raises(ValueError, match="semantic training crops every image to one size"):
        semantic.check_aspect_ratio_groups()
    get_task("detection").check_aspect_ratio_groups()


def test_the_panoptic_task_refuses_data_without_segments():
    from types import SimpleNamespace

    from segzoo.data.targets import INSTANCE_MASKS, SEGMENTS

    model = SimpleNamespace(num_classes=3, num_stuff=1)
    panoptic = get_task("panoptic")
    with pytest.raises(ValueError, match="panoptic model but the data is instance data"):
        panoptic.check_categories(model, SimpleNamespace(target=INSTANCE_MASKS))
    panoptic.check_categories(model, SimpleNamespace(target=SEGMENTS, num_classes=3, num_stuff=1))
    with pytest.raises(ValueError, match="set model.num_classes=4 and model.num_stuff=2"):
        panoptic.check_categories(model, SimpleNamespace(target=SEGMENTS, num_classes=4, num_stuff=2))
