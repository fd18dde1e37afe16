"""torchvision DeepLabV3 -> segzoo: converted weights reproduce torchvision's logits."""

import pytest
import torch
from torchvision.models.segmentation import (
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
)

from segzoo.convert import from_torchvision

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CASES = [
    (deeplabv3_resnet50, "deeplabv3_resnet50"),
    (deeplabv3_resnet101, "deeplabv3_resnet101"),
    (deeplabv3_mobilenet_v3_large, "deeplabv3_mobilenetv3_large"),
]


def _torchvision(fn, num_classes=5, aux_loss=True):
    """A torchvision model with random weights and randomised BatchNorm statistics."""
    model = fn(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("fn,name", CASES)
def test_converted_logits_match_torchvision(fn, name):
    tv = _torchvision(fn)
    model = from_torchvision(tv.state_dict(), name)
    assert model.num_classes == 5 and not model.training
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tv.parameters())
    x = torch.rand(2, 3, 75, 61)
    with torch.no_grad():
        ref = tv((x - MEAN) / STD)
        out = model(x)
    assert out.shape == ref["out"].shape == (2, 5, 75, 61)
    assert ref["out"].abs().max() > 1e-2  # not a degenerate comparison
    torch.testing.assert_close(out, ref["out"], atol=1e-4, rtol=0)
    with torch.no_grad():  # the backbone's last feature map too (the head shrinks differences)
        feat_ref = tv.backbone((x - MEAN) / STD)["out"]
        feat = model.backbone(model.normalize(x))[-1]
    torch.testing.assert_close(feat, feat_ref, atol=1e-4, rtol=0)
    # the auxiliary head (torchvision's MobileNetV3 one reads the first block of the
    # stride-8 stage, features[4])
    with torch.no_grad():
        _, aux = model.forward_logits(model.normalize(x), with_aux=True)
    aux = torch.nn.functional.interpolate(aux, size=x.shape[-2:], mode="bilinear")
    assert ref["aux"].abs().max() > 1e-2
    torch.testing.assert_close(aux, ref["aux"], atol=1e-4, rtol=0)


def test_mobilenet_needs_torchvision_numerics():
    """Without the BN-eps and first-block dilation adjustments the logits differ."""
    tv = _torchvision(deeplabv3_mobilenet_v3_large)
    x = torch.rand(1, 3, 96, 96)
    plain = from_torchvision(tv.state_dict(), "deeplabv3_mobilenetv3_large", tv_mobilenet=False)
    with torch.no_grad():
        feat_ref = tv.backbone((x - MEAN) / STD)["out"]
        feat = plain.backbone(plain.normalize(x))[-1]
    assert (feat - feat_ref).abs().max() > 1e-3


def test_without_aux_and_wrong_name():
    tv = _torchvision(deeplabv3_resnet50, num_classes=3, aux_loss=False)
    model = from_torchvision(tv.state_dict(), "deeplabv3_resnet50")
    assert model.aux_classifier is None and model.num_classes == 3
    with pytest.raises(ValueError, match="deeplabv3_resnet50/101"):
        from_torchvision(tv.state_dict(), "deeplabv3_mobilenetv3_large")
    with pytest.raises(ValueError, match="deeplabv3_mobilenetv3_large"):
        from_torchvision(_torchvision(deeplabv3_mobilenet_v3_large).state_dict(),
                         "deeplabv3_resnet50")
