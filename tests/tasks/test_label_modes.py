"""Label modes of semantic models: binary (one sigmoid and a tuned threshold) and multilabel (one sigmoid per
class), trained on the overlapping Shapes, stored in checkpoints and written by ``segzoo infer``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import segzoo
from segzoo.data.synthetic.shapes_multilabel import ShapesMultiLabel
from segzoo.data.targets import CLASS_MAP, MULTI_HOT
from segzoo.data.transforms import build_transforms
from segzoo.engine import build_trainer, evaluate
from segzoo.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
TINY = {"name": "unet", "channels": [16, 32, 64]}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return tmp_path_factory.mktemp("overlapping")


def _sets(root, target, n=8, size=48):
    kw = dict(num_train=n, num_val=2, size=size)
    train = ShapesMultiLabel(root, "train", target, transforms=build_transforms(target, True, size=size,
                                                                                 scale=(1.0, 1.0)), **kw)
    # the floor is a memorisation floor: the training images, evaluated without augmentation
    val = ShapesMultiLabel(root, "train", target, transforms=build_transforms(target, False), **kw)
    return train, val


def _train(root, out, mode, num_classes, epochs):
    """A tiny U-Net trained on 8 overlapping-Shapes images (2 steps an epoch), evaluated on the same images."""
    trainer, train_set = _trainer(root, out, mode, num_classes, epochs)
    return trainer, trainer.fit()


def _trainer(root, out, mode, num_classes, epochs):
    torch.manual_seed(0)
    target = MULTI_HOT if mode == "multilabel" else CLASS_MAP
    train_set, val_set = _sets(root, target)
    model = segzoo.build(num_classes=num_classes, label_mode=mode, **TINY)
    cfg = {"data": {"batch_size": 4, "num_workers": 0, "augment": {"hflip": 0.0, "color_jitter": 0.0}},
           "train": {"epochs": epochs, "lr": 0.01, "optimizer": "adamw", "warmup_steps": 0, "progress": False,
                     "device": "cpu"},
           "eval": {"num_pictures": 2, "every": epochs}}
    return build_trainer(model, train_set, val_set, cfg, out, classes=train_set.classes), train_set


def test_the_overlapping_shapes_overlap_and_read_back_as_both_kinds(shapes_root):
    train, _ = _sets(shapes_root, MULTI_HOT)
    image, masks = ShapesMultiLabel(shapes_root, "train", MULTI_HOT, num_train=8, num_val=2, size=48)[0]
    assert masks.shape == (3, 48, 48) and masks.dtype == torch.uint8
    overlapping = sum(int(((m == 1).sum(0) > 1).sum()) for _, m in
                      (ShapesMultiLabel(shapes_root, "train", MULTI_HOT, num_train=8, num_val=2, size=48)[i]
                       for i in range(8)))
    assert overlapping > 0  # pixels that carry two classes at once
    binary = ShapesMultiLabel(shapes_root, "train", CLASS_MAP, num_train=8, num_val=2, size=48)[0][1]
    assert torch.equal(binary, (masks == 1).any(0).long())
    images, batch = MULTI_HOT.collate([train[0], train[1]])
    assert images.shape == (2, 3, 48, 48) and batch.shape == (2, 3, 48, 48) and batch.dtype == torch.uint8


def test_binary_training_reaches_a_floor_and_writes_its_threshold(shapes_root, tmp_path):
    trainer, out = _train(shapes_root, tmp_path / "bin", "binary", 1, epochs=40)
    final = out["final"]
    assert final["ap"] > 0.7 and final["miou"] > 0.55, final  # the foreground is ~23% of the pixels
    assert 0 < final["f1_threshold"] < 1
    loaded = segzoo.load(tmp_path / "bin" / "model.safetensors")
    spec = loaded.spec
    assert spec.label_mode == "binary" and spec.threshold == pytest.approx(final["f1_threshold"], abs=1e-6)
    assert loaded.classes == ["background", "foreground"]  # one logit, two labels named
    resumed, _ = _trainer(shapes_root, tmp_path / "bin", "binary", 1, epochs=40)
    assert resumed.model.spec.threshold is None
    resumed.load_checkpoint()  # a resumed run takes up the threshold of its last validation
    assert resumed.model.spec.threshold == spec.threshold
    header = json.loads(json.loads(_header(tmp_path / "bin" / "model.safetensors"))["__metadata__"]["spec"])
    assert header["kwargs"]["label_mode"] == "binary" and header["threshold"] == spec.threshold


def test_multilabel_training_reaches_a_floor_with_per_class_metrics(shapes_root, tmp_path):
    _, out = _train(shapes_root, tmp_path / "ml", "multilabel", 3, epochs=120)
    final = out["final"]
    assert len(final["iou"]) == len(final["ap"]) == 3
    assert final["map"] > 0.5 and final["best_f1"] > 0.45, final  # each class covers ~10% of the pixels
    model = segzoo.load(tmp_path / "ml" / "model.safetensors")
    assert model.label_mode == "multilabel" and model.spec.threshold is None
    assert model.classes == ["circle", "square", "triangle"]


def _header(path: Path) -> str:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw[8:8 + n].decode()


def test_losses_are_the_reference_bce_and_ignore_unlabelled_pixels():
    torch.manual_seed(0)
    model = segzoo.build(num_classes=3, label_mode="multilabel", dice_weight=0.5, **TINY)
    x = torch.rand(2, 3, 16, 16)
    target = torch.randint(0, 2, (2, 3, 16, 16), dtype=torch.uint8)
    target[0, 1, :4] = 255
    losses = {k: v.detach() for k, v in model(x, target).items()}
    with torch.no_grad():
        logits = model(x)
    keep = target != 255
    ref = F.binary_cross_entropy_with_logits(logits[keep], target[keep].float())
    assert losses["loss_bce"] == pytest.approx(float(ref), rel=1e-5)
    p = logits.sigmoid() * keep
    g = (target == 1).float()
    dice = 1 - (2 * (p * g).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3)) + g.sum((0, 2, 3)) + 1)
    assert losses["loss_dice"] == pytest.approx(float(dice.mean()), rel=1e-5)
    assert losses["loss"] == pytest.approx(float(ref + 0.5 * dice.mean()), rel=1e-5)
    binary = segzoo.build(num_classes=1, label_mode="binary", **TINY)
    labels = torch.randint(0, 2, (2, 16, 16))
    with torch.no_grad():
        ref = F.binary_cross_entropy_with_logits(binary(x)[:, 0], labels.float())
        assert binary(x, labels)["loss_bce"] == pytest.approx(float(ref), rel=1e-5)


def test_bad_label_mode_settings_say_how_to_fix_them():
    with pytest.raises(ValueError, match="set num_classes=1"):
        segzoo.build(num_classes=2, label_mode="binary", **TINY)
    with pytest.raises(ValueError, match="label_mode must be one of"):
        segzoo.build(num_classes=2, label_mode="multi", **TINY)
    with pytest.raises(ValueError, match="remove them or use label_mode=multiclass"):
        segzoo.build(num_classes=2, label_mode="multilabel", loss="lovasz", **TINY)
    model = segzoo.build(num_classes=3, label_mode="multilabel", **TINY)
    with pytest.raises(ValueError, match="one 0/1 mask per class"):
        model(torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="a 0/255 mask"):
        model(torch.rand(1, 3, 8, 8), torch.full((1, 3, 8, 8), 7, dtype=torch.uint8))
    with pytest.raises(ValueError, match="needs one 0/1 mask per class"):
        get_task(model).check_data(torch.zeros(8, 8, dtype=torch.long), "unet")
    with pytest.raises(ValueError, match="label_mode=multilabel"):
        get_task("semantic").check_data(torch.zeros(3, 8, 8, dtype=torch.uint8), "unet")
    with pytest.raises(TypeError, match="unknown argument 'label_mode'"):
        segzoo.build("fcos_resnet50_fpn" if "fcos_resnet50_fpn" in segzoo.list_models() else "centernet_resnet18",
                     num_classes=2, label_mode="binary")


def test_the_task_variant_follows_the_model():
    binary = segzoo.build(num_classes=1, label_mode="binary", **TINY)
    multi = segzoo.build(num_classes=3, label_mode="multilabel", **TINY)
    plain = segzoo.build(num_classes=3, **TINY)
    assert get_task(plain) is get_task("semantic")
    assert get_task(binary).target is CLASS_MAP and get_task(multi).target is MULTI_HOT
    assert get_task(binary).data_classes(binary) == 2 and get_task(multi).data_classes(multi) == 3
    assert "ap" in get_task(binary).metric_names() and get_task(multi).metric_names() == ("miou", "mdice", "map",
                                                                                        "best_f1")
    binary.spec = binary.spec.__class__(**{**binary.spec.__dict__, "threshold": 0.3})
    assert get_task(binary).threshold == 0.3
    assert segzoo.predict(binary, torch.rand(3, 16, 16))["threshold"] == 0.3


def test_evaluate_scores_binary_models_as_two_labels_at_the_checkpoint_threshold(shapes_root):
    _, val = _sets(shapes_root, CLASS_MAP)
    model = segzoo.build(num_classes=1, label_mode="binary", **TINY)
    result = evaluate(model, val, class_names=val.classes, curves=True, num_pictures=1)
    assert result["class_names"] == ["background", "foreground"] and len(result["pr_curves"]["per_class"]) == 2
    assert result["confusion"].shape == (2, 2) and result["metrics"]["threshold"] == 0.5
    assert result["pictures"][0].dtype == torch.uint8
    text = get_task("semantic").format_results(result)
    assert "F1-best on this data" in text


def test_infer_writes_one_mask_per_class_and_the_binary_mask(tmp_path):
    torch.manual_seed(0)
    multi = segzoo.build(num_classes=3, label_mode="multilabel", **TINY)
    with torch.no_grad():  # a bias that makes class 1 present everywhere and the others nowhere
        head = [m for m in multi.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-5.0, 5.0, -5.0]))
    segzoo.save(multi, tmp_path / "ml.safetensors", classes=["cat", "sofa", "dog"])
    binary = segzoo.build(num_classes=1, label_mode="binary", **TINY)
    binary.spec = binary.spec.__class__(**{**binary.spec.__dict__, "threshold": 0.25})
    segzoo.save(binary, tmp_path / "bin.safetensors", classes=["background", "defect"])
    assert segzoo.load(tmp_path / "bin.safetensors").spec.threshold == 0.25
    Image.fromarray(np.full((20, 24, 3), 128, np.uint8)).save(tmp_path / "a.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for ckpt, out in (("ml", "out_ml"), ("bin", "out_bin")):
        run = subprocess.run([sys.executable, "-m", "segzoo.cli", "infer", str(tmp_path / f"{ckpt}.safetensors"),
                              str(tmp_path / "a.png"), "--out", str(tmp_path / out)], capture_output=True, text=True,
                             env=env, timeout=120)
        assert run.returncode == 0, run.stderr
    files = sorted(p.name for p in (tmp_path / "out_ml").iterdir())
    assert {"a_cat.png", "a_sofa.png", "a_dog.png", "a_overlay.png"} <= set(files)
    sofa = np.asarray(Image.open(tmp_path / "out_ml" / "a_sofa.png"))
    assert sofa.shape == (20, 24) and (sofa == 255).all() and (np.asarray(Image.open(tmp_path / "out_ml" /
                                                                                     "a_cat.png")) == 0).all()
    mask = np.asarray(Image.open(tmp_path / "out_bin" / "a_mask.png"))
    probs = segzoo.predict(segzoo.load(tmp_path / "bin.safetensors"), tmp_path / "a.png")["probs"][0]
    assert np.array_equal(mask, (probs >= 0.25).numpy().astype(np.uint8))


def test_a_multi_label_report_has_the_per_class_table_and_curves(shapes_root, tmp_path):
    from segzoo.engine.report import format_results, write_report

    _, val = _sets(shapes_root, MULTI_HOT)
    model = segzoo.build(num_classes=3, label_mode="multilabel", **TINY)
    result = evaluate(model, val, class_names=val.classes, curves=True, num_pictures=1)
    assert result["label_mode"] == "multilabel" and "confusion" not in result
    text = format_results(result)
    assert text.splitlines()[0].split() == ["class", "IoU", "Dice", "AP", "F1", "thr"] and "square" in text
    pytest.importorskip("matplotlib")
    write_report(result, tmp_path)
    rows = (tmp_path / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,iou,dice,precision,recall,ap,f1_threshold" and rows[1].startswith("circle,")
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert set(report["pr_curves"]) == {"circle", "square", "triangle"} and (tmp_path / "pr_curves.png").is_file()
