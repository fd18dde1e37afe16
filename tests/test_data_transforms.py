"""Joint transforms keep image, mask and boxes aligned; collates handle variable sizes."""

import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from segzoo.data import PadToSize, build_transforms, collate_instances, collate_semantic


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
    tf = build_transforms("instance", True, size=40, scale=(0.6, 1.6), hflip=0.5, color_jitter=0.0)
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
    tf = build_transforms("semantic", True, size=64, scale=(0.5, 0.5), color_jitter=0.0)
    out_img, out_mask = tf(tv_tensors.Image(img), tv_tensors.Mask(mask))
    assert out_img.shape == (3, 64, 64) and out_mask.dtype == torch.int64
    assert (out_mask == 255).sum() > 0  # padded area is ignored
    valid = out_mask != 255
    assert set(out_mask[valid].unique().tolist()) <= {0, 1}
    red = out_img[0] > 0.5
    agree = (red == (out_mask == 1))[valid].float().mean()
    assert agree > 0.97
    ev_img, ev_mask = build_transforms("semantic", False)(tv_tensors.Image(img), tv_tensors.Mask(mask))
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
