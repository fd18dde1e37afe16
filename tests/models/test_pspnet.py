"""PSPNet and the pyramid pooling module."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segzoo
from segzoo.layers import PyramidPooling
from segzoo.models.pspnet import PSPNet

SWAP_BACKBONES = ["resnet18", "convnext_atto", "mobilenetv3_small_100"]


def test_registered():
    assert {"pspnet_resnet50", "pspnet_resnet101"} <= set(segzoo.list_models("pspnet*"))


def test_pyramid_pooling_computes_the_bins():
    ppm = PyramidPooling(8, bins=(1, 2, 3, 6)).eval()
    assert ppm.out_channels == 8 + 4 * 2  # 8 // 4 channels per bin
    for bn in ppm.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_()
    x = torch.randn(2, 8, 12, 12)
    y = ppm(x)
    assert y.shape == (2, 16, 12, 12)
    torch.testing.assert_close(y[:, :8], x)  # the input is kept
    # bin 1 = global average -> conv -> BN -> ReLU, constant over the map
    stage = ppm.stages[0]
    ref = stage[3](stage[2](stage[1](x.mean((2, 3), keepdim=True))))
    torch.testing.assert_close(y[:, 8:10], ref.expand(-1, -1, 12, 12))
    # bin 2: 2x2 averages upsampled bilinearly
    stage = ppm.stages[1]
    pooled = F.avg_pool2d(x, 6)
    ref = F.interpolate(stage[3](stage[2](stage[1](pooled))), size=(12, 12), mode="bilinear")
    torch.testing.assert_close(y[:, 10:12], ref)


def test_pspnet_resnet50_layout():
    model = segzoo.build("pspnet_resnet50").eval()
    assert model.num_classes == 21
    ppm = model.classifier[0]
    assert ppm.bins == (1, 2, 3, 6)
    assert [s[1].in_channels for s in ppm.stages] == [2048] * 4
    assert [s[1].out_channels for s in ppm.stages] == [512] * 4
    conv = model.classifier[1][0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4096, 512, (3, 3))
    assert model.classifier[2].p == 0.1
    assert model.classifier[3].out_channels == 21
    assert model.aux_classifier[0].in_channels == 1024  # layer3
    assert model.aux_classifier[0].out_channels == 256
    assert model.aux_weight == 0.4
    feats = model.backbone(torch.rand(1, 3, 64, 64))
    assert feats[-1].shape[-2:] == (8, 8)  # dilated, output stride 8
    with torch.no_grad():
        assert model(torch.rand(1, 3, 66, 63)).shape == (1, 21, 66, 63)


def test_pspnet_resnet101_builds():
    model = segzoo.build("pspnet_resnet101", num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 4, 64, 64)


@pytest.mark.parametrize("backbone", SWAP_BACKBONES)
def test_backbone_swap_train_and_odd_sizes(backbone):
    model = segzoo.build("pspnet_resnet50", num_classes=3, backbone=backbone).train()
    x = torch.rand(2, 3, 71, 65)
    t = torch.randint(0, 3, (2, 71, 65))
    losses = model(x, t)
    torch.testing.assert_close(losses["loss"], losses["loss_ce"] + 0.4 * losses["loss_aux"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 97, 67)).shape == (1, 3, 97, 67)


def test_batch_of_one_in_training_says_how_to_fix():
    model = PSPNet(num_classes=3, backbone="resnet18").train()
    with pytest.raises(ValueError, match="batch size >= 2"):
        model(torch.rand(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.long))


def test_options_and_errors():
    model = PSPNet(num_classes=3, backbone="resnet18", bins=(1, 3), aux_loss=False)
    assert model.classifier[0].bins == (1, 3) and model.aux_classifier is None
    assert model.classifier[1][0].in_channels == 512 + 2 * 256
    with pytest.raises(ValueError, match="aux_index"):
        PSPNet(num_classes=3, backbone="resnet18", aux_index=5)
    with pytest.raises(ValueError, match="bins"):
        PyramidPooling(16, bins=(0, 2))


def test_class_layers_reinitialised(tmp_path):
    model = segzoo.build("pspnet_resnet50", num_classes=3, backbone="resnet18")
    segzoo.save(model, tmp_path / "p.safetensors")
    with pytest.warns(UserWarning, match="classifier.3"):
        other = segzoo.build("pspnet_resnet50", num_classes=6, backbone="resnet18",
                             weights=tmp_path / "p.safetensors")
    assert other.classifier[3].out_channels == other.aux_classifier[4].out_channels == 6
    torch.testing.assert_close(other.classifier[1][0].weight, model.classifier[1][0].weight)
