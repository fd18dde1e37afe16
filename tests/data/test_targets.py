"""Bad and unusual training targets: a clear error that says how to fix the data, or correct training.

Every semantic model checks its targets in ``SegmentationModel.check_targets`` and every
detection/instance model in ``DetectionModel.check_targets``, so one small build per
family covers the registry (the whole registry would take minutes on 2 cores).
"""

import functools

import pytest
import torch

from tests.conftest import build_small

SEMANTIC = ["fcn_resnet50", "unet", "unet_resnet18", "deeplabv3_mobilenetv3_large", "deeplabv3plus_resnet50",
            "pspnet_resnet50", "hrnet_w18_small"]
# (name, build kwargs): ResNet-18 in place of ResNet-50 where the entrypoint takes backbone=
DETECTION = [("centernet_resnet18", {}), ("fasterrcnn_resnet50_fpn", {"backbone": "resnet18"}),
             ("maskrcnn_resnet50_fpn", {"backbone": "resnet18"})]
NUM_CLASSES = 3
SIZE = 64


@functools.cache
def _build(name: str, kwargs: tuple) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_small(name, num_classes=NUM_CLASSES, **dict(kwargs))


@pytest.fixture(scope="module", autouse=True)
def _clear_cache():
    yield
    _build.cache_clear()


def model_for(name, **kwargs):
    model = _build(name, tuple(sorted(kwargs.items())))
    model.zero_grad(set_to_none=True)
    return model.train()


def assert_trains(model, images, targets):
    """One forward/backward: every loss finite, gradients finite, at least one non-zero."""
    losses = model(images, targets)
    for k, v in losses.items():
        assert torch.isfinite(v).all(), f"{k} = {v}"
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    return losses


# ---------------------------------------------------------------------------- semantic


def semantic_batch(n=2):
    images = torch.rand(n, 3, SIZE, SIZE)
    masks = torch.randint(0, NUM_CLASSES, (n, SIZE, SIZE))
    return images, masks


@pytest.mark.parametrize("name", SEMANTIC)
def test_semantic_bad_labels(name):
    model = model_for(name)
    images, masks = semantic_batch()
    masks[1, 5, 7] = NUM_CLASSES  # one pixel past the last class
    with pytest.raises(ValueError, match=rf"target has value {NUM_CLASSES} but num_classes={NUM_CLASSES}"):
        model(images, masks)
    masks[1, 5, 7] = -1  # negative, and not the ignore index
    with pytest.raises(ValueError, match=r"target has value -1 .*ignore_index=255"):
        model(images, masks)
    masks[1, 5, 7] = 255  # 255 is the ignore index: fine
    masks[0, :4] = 255
    assert_trains(model, images, masks)


@pytest.mark.parametrize("name", SEMANTIC)
def test_semantic_mask_shape_and_dtype(name):
    model = model_for(name)
    images, masks = semantic_batch()
    with pytest.raises(ValueError, match=r"masks must be N x H x W at the image size"):
        model(images, masks[:, : SIZE // 2])
    with pytest.raises(ValueError, match=r"masks must be N x H x W"):
        model(images, masks[:1])  # one mask for two images
    with pytest.raises(ValueError, match=r"integer class indices"):
        model(images, masks.float())
    assert torch.isfinite(model(images, masks[:, None])["loss"])  # N x 1 x H x W is accepted


@pytest.mark.parametrize("name", SEMANTIC)
def test_semantic_images_without_objects(name):
    model = model_for(name)
    images, _ = semantic_batch()
    background = torch.zeros(2, SIZE, SIZE, dtype=torch.int64)
    assert_trains(model, images, background)
    model.zero_grad(set_to_none=True)
    unlabelled = torch.full((2, SIZE, SIZE), 255)  # nothing labelled: loss 0, not NaN
    losses = model(images, unlabelled)
    assert all(float(v.detach()) == 0.0 for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_semantic_0_255_mask_hint():
    model = model_for("unet")
    model.ignore_index = 254  # a dataset whose ignore label is not 255 and whose masks are 0/255
    images, _ = semantic_batch()
    masks = torch.randint(0, 2, (2, SIZE, SIZE)) * 255
    try:
        with pytest.raises(ValueError, match=r"value 255 .*0/255 binary mask\? map 255 to 1"):
            model(images, masks)
    finally:
        model.ignore_index = 255


# ---------------------------------------------------------------------------- detection / instance


def det_target(boxes, labels, with_mask):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    t = {"boxes": boxes, "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1)}
    if with_mask:
        masks = torch.zeros(len(boxes), SIZE, SIZE, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.clamp(0, SIZE).round().long().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        t["masks"] = masks
    return t


def det_case(name, kwargs):
    model = model_for(name, **kwargs)
    with_mask = model.spec.task == "instance"
    good = det_target([[4, 6, 30, 40], [20, 10, 60, 50]], [0, 2], with_mask)
    return model, with_mask, good


DET_IDS = [n for n, _ in DETECTION]


@pytest.mark.parametrize(("name", "kwargs"), DETECTION, ids=DET_IDS)
def test_detection_bad_labels(name, kwargs):
    model, with_mask, good = det_case(name, kwargs)
    images = torch.rand(2, 3, SIZE, SIZE)
    for bad, shown in ((NUM_CLASSES, NUM_CLASSES), (-1, -1)):
        target = det_target([[4, 6, 30, 40]], [bad], with_mask)
        with pytest.raises(ValueError, match=rf"targets\[1\] has label {shown} but num_classes={NUM_CLASSES}; "
                                             r"labels are 0-based .*background is implicit"):
            model(images, [good, target])
    with pytest.raises(ValueError, match=r"must be integers"):
        model(images, [good, {**good, "labels": good["labels"].float()}])
    with pytest.raises(ValueError, match=r"2 boxes but 1 labels"):
        model(images, [good, {**good, "labels": good["labels"][:1]}])
    with pytest.raises(ValueError, match=r"got 1 targets for 2 images"):
        model(images, [good])


@pytest.mark.parametrize(("name", "kwargs"), DETECTION, ids=DET_IDS)
def test_detection_bad_boxes(name, kwargs):
    model, with_mask, good = det_case(name, kwargs)
    images = torch.rand(2, 3, SIZE, SIZE)
    flipped = {**good, "boxes": good["boxes"][:, [2, 1, 0, 3]]}  # x2 < x1
    with pytest.raises(ValueError, match=r"x2 < x1 or y2 < y1; boxes must be xyxy .*box_convert"):
        model(images, [good, flipped])
    nan = {**good, "boxes": good["boxes"].clone()}
    nan["boxes"][0, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf box coordinates"):
        model(images, [good, nan])
    zero = det_target([[4, 6, 30, 40], [10, 10, 10, 30]], [0, 1], with_mask)  # zero width
    with pytest.raises(ValueError, match=r"targets\[1\] has 1 box\(es\) with zero width or height .*indices \[1\]"
                                         r".*SanitizeBoundingBoxes"):
        model(images, [good, zero])
    outside = det_target([[4, 6, 30, 40], [70, 10, 90, 30]], [0, 1], with_mask)  # wholly right of the image
    with pytest.raises(ValueError, match=r"zero width or height \(after clipping to the 64x64 image\)"):
        model(images, [good, outside])


@pytest.mark.parametrize(("name", "kwargs"), DETECTION, ids=DET_IDS)
def test_detection_boxes_partly_outside_are_clipped(name, kwargs):
    model, with_mask, good = det_case(name, kwargs)
    images = torch.rand(2, 3, SIZE, SIZE)
    partly = det_target([[-10, -5, 30, 40], [40, 30, 90, 200]], [0, 1], with_mask)
    assert_trains(model, images, [good, partly])
    checked = model.check_targets([partly], torch.tensor([[SIZE, SIZE]]))
    assert checked[0]["boxes"].tolist() == [[0, 0, 30, 40], [40, 30, SIZE, SIZE]]


@pytest.mark.parametrize(("name", "kwargs"), [DETECTION[2]], ids=DET_IDS[2:])
def test_instance_bad_masks(name, kwargs):
    model, _, good = det_case(name, kwargs)
    images = torch.rand(2, 3, SIZE, SIZE)
    small = {**good, "masks": good["masks"][:, : SIZE // 2]}
    with pytest.raises(ValueError, match=r"\['masks'\] has shape \(2, 32, 64\), expected \(2, 64, 64\): one mask "
                                         "per box at the image size"):
        model(images, [good, small])
    with pytest.raises(ValueError, match=r"expected \(2, 64, 64\)"):
        model(images, [good, {**good, "masks": good["masks"][:1]}])  # one mask for two boxes
    no_masks = {k: v for k, v in good.items() if k != "masks"}
    with pytest.raises(ValueError, match=r"targets\[1\] has no 'masks'"):
        model(images, [good, no_masks])


@pytest.mark.parametrize(("name", "kwargs"), DETECTION, ids=DET_IDS)
def test_detection_images_without_objects(name, kwargs):
    model, with_mask, good = det_case(name, kwargs)
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, 48, 80)]  # mixed sizes work for detection
    empty = det_target([], [], with_mask=False)
    if with_mask:
        empty["masks"] = torch.zeros(0, 48, 80, dtype=torch.uint8)
    assert_trains(model, images, [good, empty])
    model.zero_grad(set_to_none=True)
    empty0 = det_target([], [], with_mask)
    losses = assert_trains(model, images[:1], [empty0])  # a batch with no object at all
    assert float(losses["loss"].detach()) > 0  # the negatives still train the classifier / heatmap


@pytest.mark.parametrize(("name", "kwargs"), DETECTION, ids=DET_IDS)
def test_detection_thousands_of_objects(name, kwargs):
    model, with_mask, _ = det_case(name, kwargs)
    g = torch.Generator().manual_seed(0)
    k = 2000
    xy = torch.rand(k, 2, generator=g) * (SIZE - 8)
    wh = 2 + torch.rand(k, 2, generator=g) * 6
    boxes = torch.cat([xy, xy + wh], dim=1)  # (K, 4), all inside the image
    labels = torch.randint(0, NUM_CLASSES, (k,), generator=g)
    target = {"boxes": boxes, "labels": labels}
    if with_mask:  # each mask: the box's pixels
        ys = torch.arange(SIZE).view(1, SIZE, 1) + 0.5
        xs = torch.arange(SIZE).view(1, 1, SIZE) + 0.5
        b = boxes[:, :, None, None]
        target["masks"] = ((xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])).to(torch.uint8)
    assert_trains(model, torch.rand(1, 3, SIZE, SIZE), [target])
