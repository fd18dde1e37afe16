"""torchvision Mask R-CNN / Faster R-CNN weights converted into segzoo give torchvision's results."""

from __future__ import annotations

import re

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

import segzoo
import segzoo.convert

SIZE = 320


def _randomise(tv) -> None:
    """Spread the random classifier so that scores are distinct (ties would make the top-100 ambiguous)."""
    torch.nn.init.normal_(tv.roi_heads.box_predictor.cls_score.weight, std=0.05)
    torch.nn.init.normal_(tv.roi_heads.box_predictor.bbox_pred.weight, std=0.01)


def _image() -> torch.Tensor:
    img = torch.rand(3, SIZE, SIZE) * 0.3
    img[:, 40:160, 60:200] += 0.6  # some structure for the RPN
    img[1, 180:300, 20:140] += 0.5
    return img.clamp(0, 1)


def _tv_kwargs() -> dict:
    # min_size = max_size = image side: torchvision's internal resize is the identity
    return dict(weights=None, weights_backbone=None, min_size=SIZE, max_size=SIZE, box_score_thresh=0.0)


@pytest.fixture(scope="module")
def maskrcnn_pair():
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(**_tv_kwargs()).eval()
    _randomise(tv)
    ours = segzoo.convert.from_torchvision(tv.state_dict(), "maskrcnn_resnet50_fpn", box_score_thresh=0.0)
    return tv, ours


def _compare(tv_out: dict, ours: dict, masks: bool) -> int:
    n = len(tv_out["boxes"])
    assert n >= 20, f"only {n} torchvision detections"
    assert len(ours["boxes"]) == n
    torch.testing.assert_close(ours["boxes"], tv_out["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(ours["scores"], tv_out["scores"], atol=1e-5, rtol=1e-4)
    assert torch.equal(ours["labels"], tv_out["labels"] - 1)  # segzoo is 0-based
    if masks:
        assert ours["masks"].shape == (n, SIZE, SIZE)
        diff = (ours["masks"] - tv_out["masks"][:, 0]).abs().mean()
        assert diff < 1e-3, f"mean abs mask difference {diff}"
    return n


def test_maskrcnn_matches_torchvision(maskrcnn_pair):
    tv, ours = maskrcnn_pair
    assert ours.num_classes == 90
    img = _image()
    with torch.no_grad():
        ref = tv([img])[0]
        got = ours([img])[0]
    _compare(ref, got, masks=True)
    assert got["masks"].min() >= 0 and got["masks"].max() <= 1


def test_maskrcnn_parameter_count_matches_torchvision(maskrcnn_pair):
    tv, ours = maskrcnn_pair
    n_ours = sum(p.numel() for p in ours.parameters())
    # torchvision's published count (frozen BatchNorm, so BN affine terms are buffers), less the
    # background outputs of the box regressor and the mask predictor that segzoo does not have
    dropped = (4 * 1024 + 4) + (256 + 1)
    assert n_ours == 44_401_393 - dropped
    bn_params = sum(m.weight.numel() * 2 for m in tv.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(p.numel() for p in tv.parameters()) - bn_params == 44_401_393


def test_fasterrcnn_matches_torchvision():
    torch.manual_seed(1)
    tv = fasterrcnn_resnet50_fpn(**_tv_kwargs(), num_classes=11).eval()
    _randomise(tv)
    ours = segzoo.convert.from_torchvision(tv.state_dict(), "fasterrcnn_resnet50_fpn", box_score_thresh=0.0)
    assert ours.num_classes == 10 and ours.spec.task == "detection"
    img = _image().flip(-1)
    with torch.no_grad():
        ref = tv([img])[0]
        got = ours(img[None])[0]
    assert "masks" not in got
    _compare(ref, got, masks=False)


def test_converter_rejects_foreign_state_dict():
    with pytest.raises(KeyError, match="not a torchvision Faster/Mask R-CNN"):
        segzoo.convert.from_torchvision({"backbone.body.conv1.weight": torch.zeros(1)}, "maskrcnn_resnet50_fpn")


def test_mapper_handles_old_key_names_and_drops_mask_branch_for_faster_rcnn(maskrcnn_pair):
    from segzoo.models.mask_rcnn import map_rcnn

    state = maskrcnn_pair[0].state_dict()
    new, n = map_rcnn(state, "maskrcnn_resnet50_fpn")
    def old_name(k: str) -> str:  # torchvision < 0.13: mask_head.mask_fcn{i+1}.weight
        m = re.match(r"roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)$", k)
        return f"roi_heads.mask_head.mask_fcn{int(m.group(1)) + 1}.{m.group(2)}" if m else k

    old_style = {old_name(k): v for k, v in state.items()}
    assert any("mask_fcn4" in k for k in old_style)
    again, _ = map_rcnn(old_style, "maskrcnn_resnet50_fpn")
    assert again.keys() == new.keys() and n == 90
    faster, _ = map_rcnn(state, "fasterrcnn_resnet50_fpn")
    with torch.device("meta"):
        model = segzoo.build("fasterrcnn_resnet50_fpn", num_classes=90, frozen_bn=True)
    assert faster.keys() == model.state_dict().keys()
