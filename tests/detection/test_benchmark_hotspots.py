"""The hot-spot fixes found by the benchmark's profiler pass keep Mask R-CNN's outputs."""

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from segzoo.detection.postprocess import paste_masks
from segzoo.detection.roi_heads import MaskHead, RoIHeads


def test_paste_masks_matches_torchvision_for_many_detections():
    g = torch.Generator().manual_seed(0)
    for d in (0, 1, 50):
        xy = torch.rand(d, 2, generator=g) * 40  # inside the canvas: torchvision fails on boxes outside it
        wh = torch.rand(d, 2, generator=g) * 35
        boxes = torch.cat([xy, xy + wh], 1)
        probs = torch.rand(d, 28, 28, generator=g)
        ours = paste_masks(probs, boxes, 96, 80)
        ref = paste_masks_in_image(probs[:, None], boxes, (96, 80))[:, 0]
        assert ours.shape == (d, 96, 80)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_mask_head_logits_of_the_labels_only():
    head = MaskHead(16, num_classes=7, layers=(16, 16)).eval()
    torch.nn.init.normal_(head.mask_logits.bias)
    x = torch.randn(5, 16, 14, 14)
    labels = torch.tensor([0, 6, 3, 3, 1])
    with torch.no_grad():
        full = head(x)  # (5, 7, 28, 28)
        picked = head.forward_labels(x, labels)
    assert picked.shape == (5, 28, 28)
    torch.testing.assert_close(picked, full[torch.arange(5), labels], atol=1e-5, rtol=1e-5)


def test_roi_heads_without_proposals_return_no_detections():
    heads = RoIHeads(num_classes=3, in_channels=8, representation_size=16, mask_layers=(8,)).eval()
    features = [torch.randn(1, 8, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    with torch.no_grad():
        out = heads(features, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.tensor([[64, 64]]))
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,) and out["masks"].shape == (0, 64, 64)
