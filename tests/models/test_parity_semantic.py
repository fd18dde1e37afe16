"""Semantic models' training losses against each reference's loss.

* torchvision's FCN and DeepLabV3 (``references/segmentation/train.py``): the cross-entropy
  (``ignore_index=255``, mean over labelled pixels) of ``out`` plus 0.5 x that of ``aux``, both
  already at input size. Checked end to end: torchvision's model and criterion against the
  converted segzoo model, from the same random weights.
* PSPNet (the paper's official code): main + 0.4 x auxiliary cross-entropy, each head's logits
  upsampled bilinearly to the label size before the loss.
* HRNetV2 (official): one cross-entropy on the stride-4 logits upsampled to the label size
  (bilinear, the model's ``align_corners``).
* HRNet-OCR (official, ``BALANCE_WEIGHTS: [0.4, 1]``): 0.4 x the soft-region cross-entropy plus
  1.0 x the OCR one, each output upsampled to the label size with ``align_corners=True``.

The last three are re-stated from the heads' raw logits (``forward_logits``), so a loss taken
at the logits' resolution (labels downsampled), another weight or another upsampling fails.
Models are in eval mode (dropout off); the losses do not depend on ``model.training``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.segmentation import deeplabv3_resnet50, fcn_resnet50

import segzoo
from segzoo.convert import from_torchvision

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
HRNET_SMALL = dict(width=16, stage1_blocks=1, stage1_channels=32, stage_modules=(1, 1, 1), stage_blocks=2)
CLASSES = 5


def _data(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, h, w, generator=g)
    y = torch.randint(0, CLASSES, (2, h, w), generator=g)
    y[torch.rand(2, h, w, generator=g) < 0.2] = 255  # unlabelled pixels
    y[1, : h // 3] = 255  # images with different labelled counts: the mean is over all labelled pixels
    return x, y


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.double(), y, ignore_index=255)


def _check(losses: dict, expected: dict) -> None:
    assert set(losses) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(losses[k].double(), v, rtol=1e-5, atol=1e-7, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("builder", [fcn_resnet50, deeplabv3_resnet50])
def test_torchvision_models_losses_equal_torchvision_reference(builder):
    torch.manual_seed(0)
    tv = builder(weights=None, weights_backbone=None, num_classes=CLASSES, aux_loss=True).eval()
    ours = from_torchvision(tv.state_dict(), builder.__name__)
    assert ours.aux_weight == 0.5
    x, y = _data(37, 45)  # not a multiple of the output stride
    with torch.no_grad():
        out = tv((x - MEAN) / STD)
        losses = ours(x, y)
    ce, aux = _ce(out["out"], y), _ce(out["aux"], y)
    _check(losses, {"loss_ce": ce, "loss_aux": aux, "loss": ce + 0.5 * aux})


def _spread_head(model) -> None:
    """The official N(0, 0.001) head init leaves near-uniform logits, whose loss hardly depends
    on how they are upsampled: wider weights make every rule matter."""
    for m in model.head.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.2)


def _restated(model, x, y, align_corners: bool, main: float, aux_weight: float | None) -> dict:
    with torch.no_grad():
        out, aux = model.forward_logits(model.normalize(x), with_aux=True)
    assert out.shape[-2:] != y.shape[-2:]  # the heads predict below the label size

    def up(t):
        return F.interpolate(t, size=y.shape[-2:], mode="bilinear", align_corners=align_corners)

    ce = _ce(up(out), y)
    if aux_weight is None:
        return {"loss_ce": ce, "loss": main * ce}
    loss_aux = _ce(up(aux), y)
    return {"loss_ce": ce, "loss_aux": loss_aux, "loss": main * ce + aux_weight * loss_aux}


def test_pspnet_loss_equals_the_official_formula(small_model):
    model = small_model("pspnet_resnet50", num_classes=CLASSES)
    x, y = _data(40, 56)
    with torch.no_grad():
        losses = model(x, y)
    _check(losses, _restated(model, x, y, align_corners=False, main=1.0, aux_weight=0.4))


@pytest.mark.parametrize("align_corners", [False, True])
def test_hrnet_loss_equals_the_official_formula(align_corners):
    model = segzoo.build("hrnet_w18_small", num_classes=CLASSES, align_corners=align_corners,
                         **HRNET_SMALL).eval()
    _spread_head(model)
    x, y = _data(40, 56)
    with torch.no_grad():
        losses = model(x, y)
    _check(losses, _restated(model, x, y, align_corners, main=1.0, aux_weight=None))


def test_hrnet_ocr_loss_equals_the_official_formula():
    model = segzoo.build("hrnet_w48_ocr", num_classes=CLASSES, mid_channels=32, key_channels=16,
                         **HRNET_SMALL).eval()
    _spread_head(model)
    x, y = _data(40, 56)
    with torch.no_grad():
        losses = model(x, y)
    _check(losses, _restated(model, x, y, align_corners=True, main=1.0, aux_weight=0.4))
