"""Joint transforms keep image, mask and boxes aligned; collates handle variable sizes; the recipes'
augmentations follow their references."""

import colorsys

import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from segzoo.data import PadToSize, build_transforms, collate_instances, collate_semantic
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS
from segzoo.data.transforms.augment import (
    CENTERNET_EIGVAL,
    CENTERNET_EIGVEC_BGR,
    CENTERNET_SCALES,
    CenterAffine,
    PCALighting,
    PhotoMetricDistortion,
    RandomRescale,
    SegRandomCrop,
)


def _sample(h=48, w=64):
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 5:20, 4:30] = 1
    masks[1, 25:40, 40:60] = 1
    img[0] = masks[0] * 200
    img[1] = masks[1] * 200
    boxes = tv_tensors.BoundingBoxes(masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1]), format="XYXY",
                                     canvas_size=(h, w))
    target = {"boxes": boxes, "labels": torch.tensor([0, 1]), "masks": tv_tensors.Mask(masks)}
    return tv_tensors.Image(img), target


@pytest.mark.parametrize("seed", range(6))
def test_instance_preset_keeps_boxes_masks_and_pixels_aligned(seed):
    torch.manual_seed(seed)
    tf = build_transforms(INSTANCE_MASKS, True, size=40, scale=(0.6, 1.6), hflip=0.5, color_jitter=0.0)
    image, target = tf(*_sample())
    assert image.dtype == torch.float32 and image.shape == (3, 40, 40) and 0 <= image.min() <= image.max() <= 1
    assert len(target["boxes"]) == len(target["labels"]) == target["masks"].shape[0]
    for box, mask, label in zip(target["boxes"], target["masks"], target["labels"]):
        if mask.sum() == 0:
            continue
        ys, xs = torch.nonzero(mask, as_tuple=True)
        # the box covers its mask (one pixel of slack for resampling)
        assert box[0] <= xs.min() + 1 and box[1] <= ys.min() + 1
        assert box[2] >= xs.max() and box[3] >= ys.max()
        # the mask sits on the pixels of its own colour channel
        assert image[label, mask.bool()].mean() > 0.5


def test_flip_moves_box_with_mask():
    image, target = _sample()
    out_img, out = v2.RandomHorizontalFlip(p=1.0)(image, target)
    w = image.shape[-1]
    for box, mask in zip(out["boxes"], out["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert out["boxes"][0, 0] == w - 30 and torch.equal(out_img, image.flip(-1))


def test_semantic_preset_pads_mask_with_ignore_and_keeps_alignment():
    torch.manual_seed(0)
    img = torch.zeros(3, 30, 30, dtype=torch.uint8)
    mask = torch.zeros(30, 30, dtype=torch.int64)
    mask[:, 15:] = 1
    img[0, :, 15:] = 255
    tf = build_transforms(CLASS_MAP, True, size=64, scale=(0.5, 0.5), color_jitter=0.0)
    out_img, out_mask = tf(tv_tensors.Image(img), tv_tensors.Mask(mask))
    assert out_img.shape == (3, 64, 64) and out_mask.dtype == torch.int64
    assert (out_mask == 255).sum() > 0  # padded area is ignored
    valid = out_mask != 255
    assert set(out_mask[valid].unique().tolist()) <= {0, 1}
    red = out_img[0] > 0.5
    agree = (red == (out_mask == 1))[valid].float().mean()
    assert agree > 0.97
    ev_img, ev_mask = build_transforms(CLASS_MAP, False)(tv_tensors.Image(img), tv_tensors.Mask(mask))
    assert ev_img.shape == (3, 30, 30) and torch.equal(ev_mask, mask)


def test_pad_to_size_and_collates():
    img, mask = tv_tensors.Image(torch.rand(3, 10, 12)), tv_tensors.Mask(torch.ones(10, 12, dtype=torch.int64))
    a, b = PadToSize((16, 14))(img, mask)
    assert a.shape == (3, 16, 14) and b.shape == (16, 14) and b[12, 13] == 255 and a[:, 12, 13].abs().sum() == 0
    images, masks = collate_semantic([(img, mask), (torch.rand(3, 8, 20), torch.zeros(8, 20, dtype=torch.int64))])
    assert images.shape == (2, 3, 10, 20) and masks.shape == (2, 10, 20)
    assert masks[0, 0, 15] == 255 and masks[1, 9, 0] == 255 and type(images) is torch.Tensor
    image, target = _sample()
    ims, tgts = collate_instances([(image, target), (image[:, :20], {"boxes": torch.zeros(0, 4),
                                                                      "labels": torch.zeros(0, dtype=torch.int64)})])
    assert [tuple(i.shape) for i in ims] == [(3, 48, 64), (3, 20, 64)]
    assert type(tgts[0]["boxes"]) is torch.Tensor and tgts[0]["masks"].dtype == torch.uint8
    assert tgts[1]["boxes"].shape == (0, 4)


# ------------------------------------------------------------------ the recipes' augmentations


def _box_image(h=60, w=90, box=(20, 15, 50, 40)):
    """A black image with a white rectangle and its box (xyxy, exclusive right/bottom)."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    img[:, y0:y1, x0:x1] = 255
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    mask[:, y0:y1, x0:x1] = 1
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([box], dtype=torch.float32), format="XYXY",
                                                canvas_size=(h, w)),
              "labels": torch.tensor([0]), "masks": tv_tensors.Mask(mask)}
    return tv_tensors.Image(img), target


def _assert_box_frames_pixels(image, box, tol=1.5):
    ys, xs = torch.nonzero(image[0] > (0.5 if image.is_floating_point() else 127), as_tuple=True)
    assert len(xs), "the rectangle left the image but its box was kept"
    frame = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert (box.float() - frame).abs().max() <= tol, (box, frame)


def test_random_rescale_fits_the_reference_size_whatever_the_orientation():
    torch.manual_seed(0)
    t = RandomRescale((50, 100), scale=(1.0, 1.0))
    for shape in [(100, 200), (200, 100)]:  # landscape and portrait get the same factor 0.5
        img = tv_tensors.Image(torch.zeros(3, *shape, dtype=torch.uint8))
        assert t(img).shape[-2:] == (shape[0] // 2, shape[1] // 2)
    # an int reference scales the long side to it (the official HRNet base_size)
    img = tv_tensors.Image(torch.zeros(3, 40, 80, dtype=torch.uint8))
    assert RandomRescale(120, scale=(1.0, 1.0))(img).shape[-2:] == (60, 120)


def test_random_rescale_draws_ratios_in_range_and_on_the_grid():
    torch.manual_seed(0)
    flat = [tv_tensors.Image(torch.zeros(3, 100, 100))]
    ratios = [RandomRescale(100, (0.5, 2.0)).make_params(flat)["ratio"] for _ in range(400)]
    assert 0.5 <= min(ratios) < 0.55 and 1.95 < max(ratios) <= 2.0
    grid = RandomRescale(100, (0.5, 2.1), step=0.1)
    drawn = {grid.make_params(flat)["ratio"] for _ in range(600)}
    assert drawn == {round(0.5 + 0.1 * i, 10) for i in range(17)}  # HRNet: 0.5, 0.6, ..., 2.1


def test_seg_random_crop_stays_inside_and_balances_classes():
    torch.manual_seed(0)
    mask = torch.zeros(1, 40, 60, dtype=torch.int64)
    mask[..., 40:] = 1  # a strip of class 1 on the right: 42% of the crops are balanced
    img = tv_tensors.Image(torch.zeros(3, 40, 60, dtype=torch.uint8))

    def balanced_share(ratio):
        crop = SegRandomCrop((40, 30), cat_max_ratio=ratio)
        ok = 0
        for _ in range(60):
            _, m = crop(img, tv_tensors.Mask(mask))
            assert m.shape[-2:] == (40, 30)
            counts = torch.bincount(m.flatten(), minlength=2)
            ok += bool(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
        return ok / 60

    assert balanced_share(0.75) > 0.95 and balanced_share(1.0) < 0.6
    tall = SegRandomCrop((64, 32))(tv_tensors.Mask(mask))  # taller than the image: the whole height
    assert tall.shape[-2:] == (40, 32)


def test_semantic_preset_pads_bottom_right_with_ignore_after_colour_ops():
    torch.manual_seed(0)
    img = tv_tensors.Image(torch.full((3, 30, 40), 200, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(30, 40, dtype=torch.int64))
    tf = build_transforms(CLASS_MAP, True, size=40, crop=(48, 64), scale=(1.0, 1.0), hflip=0.0,
                          color_jitter=0.3, photometric=True)
    for _ in range(5):
        out_img, out_mask = tf(img, mask)
        assert out_img.shape == (3, 48, 64) and out_mask.shape == (48, 64)
        assert bool((out_mask[:30, :40] == 1).all()) and bool((out_mask[30:] == 255).all())
        assert bool((out_mask[:, 40:] == 255).all())
        assert float(out_img[:, 30:].abs().max()) == 0 and float(out_img[:, :, 40:].abs().max()) == 0


def test_semantic_preset_flips_with_probability_hflip():
    torch.manual_seed(0)
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    img[:, :, :4] = 255
    tf = build_transforms(CLASS_MAP, True, size=8, scale=(1.0, 1.0), hflip=0.3, color_jitter=0.0)
    flips = sum(bool(tf(tv_tensors.Image(img), tv_tensors.Mask(torch.zeros(8, 8)))[0][0, 0, 0] == 0)
                for _ in range(400))
    assert 0.24 < flips / 400 < 0.36


def test_semantic_preset_is_repeatable_under_a_seed():
    img = tv_tensors.Image(torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 3, (50, 70)))
    tf = build_transforms(CLASS_MAP, True, size=32, photometric=True, cat_max_ratio=0.75)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(tf(img, mask))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_photometric_distortion_steps_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 6, 7, generator=g)
    t = PhotoMetricDistortion()
    none = {"brightness": None, "contrast_first": True, "contrast": None, "saturation": None, "hue": None}
    torch.testing.assert_close(t.transform(img, {**none, "brightness": 20 / 255}), (img + 20 / 255).clamp(0, 1))
    torch.testing.assert_close(t.transform(img, {**none, "contrast": 1.4}), (img * 1.4).clamp(0, 1))

    def hsv_map(x, fn):
        out = torch.empty_like(x)
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                out[:, i, j] = torch.tensor(colorsys.hsv_to_rgb(*fn(*colorsys.rgb_to_hsv(*x[:, i, j].tolist()))))
        return out

    for k in (0.5, 1.3, 3.0):  # saturation scaled in HSV and clipped at 1, as OpenCV's uint8 HSV
        ref = hsv_map(img, lambda h, s, v, k=k: (h, min(s * k, 1.0), v))
        torch.testing.assert_close(t.transform(img, {**none, "saturation": k}), ref, atol=1e-5, rtol=0)
    ref = hsv_map(img, lambda h, s, v: ((h - 12 / 180) % 1.0, s, v))  # hue in OpenCV's 180 steps
    torch.testing.assert_close(t.transform(img, {**none, "hue": -12}), ref, atol=1e-4, rtol=0)
    # contrast first or last
    both = {**none, "brightness": 0.1, "contrast": 1.5, "saturation": 0.5}
    sat = lambda x: t.transform(x, {**none, "saturation": 0.5})  # noqa: E731
    first = sat(((img + 0.1).clamp(0, 1) * 1.5).clamp(0, 1))
    last = (sat((img + 0.1).clamp(0, 1)) * 1.5).clamp(0, 1)
    torch.testing.assert_close(t.transform(img, both), first)
    torch.testing.assert_close(t.transform(img, {**both, "contrast_first": False}), last)


def test_photometric_distortion_parameters_follow_mmsegmentation():
    torch.manual_seed(0)
    t = PhotoMetricDistortion()
    draws = [t.make_params([]) for _ in range(2000)]
    for key in ("brightness", "contrast", "saturation", "hue"):
        share = sum(d[key] is not None for d in draws) / len(draws)
        assert 0.45 < share < 0.55, (key, share)
    assert 0.45 < sum(d["contrast_first"] for d in draws) / len(draws) < 0.55
    b = [d["brightness"] for d in draws if d["brightness"] is not None]
    c = [d["contrast"] for d in draws if d["contrast"] is not None]
    hue = {d["hue"] for d in draws if d["hue"] is not None}
    assert -32 / 255 <= min(b) < -30 / 255 and 30 / 255 < max(b) <= 32 / 255
    assert 0.5 <= min(c) < 0.52 and 1.48 < max(c) <= 1.5
    assert hue == set(range(-18, 18))  # numpy's randint(-18, 18): 18 itself excluded
    # images only: masks and boxes pass unchanged; uint8 stays uint8
    image, target = _box_image()
    out_img, out = t(image, target)
    assert out_img.dtype == torch.uint8 and torch.equal(out["masks"], target["masks"])
    assert torch.equal(out["boxes"], target["boxes"])


def test_center_affine_draws_the_official_scales_and_centres():
    torch.manual_seed(0)
    t = CenterAffine(64)
    assert [t._border(128, s) for s in (100, 255, 256, 257, 640)] == [32, 64, 64, 128, 128]
    flat = [tv_tensors.Image(torch.zeros(3, 300, 200))]
    params = [t.make_params(flat) for _ in range(800)]
    assert {round(p["side"] / 300, 6) for p in params} == set(CENTERNET_SCALES)
    cx = [p["center"][0] for p in params]
    cy = [p["center"][1] for p in params]
    assert min(cx) >= 64 and max(cx) < 200 - 64 and min(cy) >= 128 and max(cy) < 300 - 128
    assert max(cx) - min(cx) > 60  # spread over the allowed range


@pytest.mark.parametrize("seed", range(8))
def test_center_affine_moves_boxes_with_the_image(seed):
    torch.manual_seed(seed)
    image, target = _box_image()
    tf = build_transforms(BOXES, True, size=64, affine=True, color_jitter=0.0, min_box_size=1.0)
    out_img, out = tf(image, target)
    assert out_img.shape == (3, 64, 64)
    if len(out["boxes"]):
        _assert_box_frames_pixels(out_img, out["boxes"][0])


def test_center_affine_eval_letterboxes_the_whole_image():
    image, target = _box_image(h=60, w=90, box=(20, 15, 50, 40))
    out_img, out = build_transforms(BOXES, False, size=45, affine=True)(image, target)
    assert out_img.shape == (3, 45, 45)  # 90 px wide -> 45: factor 0.5, centred vertically
    torch.testing.assert_close(out["boxes"][0], torch.tensor([10.0, 0.5 * 15 + 7.5, 25.0, 0.5 * 40 + 7.5]))
    _assert_box_frames_pixels(out_img, out["boxes"][0])


def test_pca_lighting_adds_the_official_colour_shift_in_rgb_order():
    torch.manual_seed(3)
    t = PCALighting(0.1)
    params = t.make_params([])
    torch.manual_seed(3)
    alpha = torch.randn(3) * 0.1
    bgr = torch.tensor(CENTERNET_EIGVEC_BGR) @ (torch.tensor(CENTERNET_EIGVAL) * alpha)
    torch.testing.assert_close(params["shift"], bgr.flip(0))
    img = torch.full((3, 4, 4), 0.5)
    torch.testing.assert_close(t.transform(img, params), 0.5 + bgr.flip(0)[:, None, None].expand(3, 4, 4))


@pytest.mark.parametrize("seed", range(4))
def test_resize_shortest_side_choice_with_max_size(seed):
    torch.manual_seed(seed)
    image, target = _box_image(h=60, w=90)
    tf = build_transforms(BOXES, True, resize_short=(30, 40), max_size=50, color_jitter=0.0)
    out_img, out = tf(image, target)
    # short side 30 -> 30 x 45; short side 40 would make the long side 60 > 50 -> capped: 33 x 50
    assert tuple(out_img.shape[-2:]) in {(30, 45), (33, 50)}
    _assert_box_frames_pixels(out_img, out["boxes"][0])
    ev_img, _ = build_transforms(BOXES, False, resize_short=(30, 40), max_size=50)(image, target)
    assert tuple(ev_img.shape[-2:]) == (33, 50)


def test_build_transforms_rejects_options_of_the_other_task_and_bad_values():
    with pytest.raises(ValueError, match="applies to detection and instance models only"):
        build_transforms(CLASS_MAP, True, affine=True)
    with pytest.raises(ValueError, match="applies to semantic models only"):
        build_transforms(INSTANCE_MASKS, True, photometric=True)
    with pytest.raises(ValueError, match="unknown"):
        build_transforms(CLASS_MAP, True, sclae=(0.5, 2.0))
    # a typed config carries every option: the other task's options at their defaults are fine
    build_transforms(CLASS_MAP, True, affine=False, resize_short=None, max_size=1333, pca_lighting=0.0)
    build_transforms(BOXES, True, crop=None, photometric=False, cat_max_ratio=1.0, scale_step=None)
    with pytest.raises(ValueError, match="one of them"):
        build_transforms(BOXES, True, affine=True, resize_short=800)
    with pytest.raises(ValueError, match="max_size"):
        build_transforms(BOXES, True, resize_short=(640, 1400))
    with pytest.raises(ValueError, match="cat_max_ratio"):
        build_transforms(CLASS_MAP, True, cat_max_ratio=0.0)
    with pytest.raises(ValueError, match="scale"):
        build_transforms(CLASS_MAP, True, scale=(2.0, 0.5))
