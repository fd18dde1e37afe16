"""U-Net: the original network and the timm-encoder variant."""

import pytest
import torch
from torch import nn

import segzoo
from segzoo.models.unet import UNet, UNetTimm

SWAP_BACKBONES = ["resnet18", "convnext_atto", "mobilenetv3_small_100"]


def _double_conv_params(cin, cout):
    return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout  # two conv(no bias) + BN


def test_registered():
    assert {"unet", "unet_resnet34", "unet_resnet50", "unet_efficientnet_b0"} <= set(
        segzoo.list_models("unet*"))


def test_original_unet_structure():
    model = segzoo.build("unet", num_classes=2)
    widths = (64, 128, 256, 512, 1024)
    expected = _double_conv_params(3, 64)
    expected += sum(_double_conv_params(a, b) for a, b in zip(widths[:-1], widths[1:]))
    # 2x2 up-conv halving the channels (with bias), then a double conv on the concatenation
    expected += sum(4 * b * a + a + _double_conv_params(2 * a, a)
                    for a, b in zip(widths[:-1], widths[1:]))
    expected += 64 * 2 + 2  # 1x1 classifier
    assert sum(p.numel() for p in model.parameters()) == expected == 31_037_698
    assert [b.up.kernel_size for b in model.up] == [(2, 2)] * 4
    assert [b.up.out_channels for b in model.up] == [512, 256, 128, 64]
    assert model.size_divisibility == 16


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (1, 17)])
def test_original_unet_output_size(size):
    model = UNet(num_classes=3, channels=(8, 16, 32, 64, 128)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, *size)).shape == (2, 3, *size)


def test_original_unet_trains():
    model = UNet(num_classes=3, channels=(8, 16, 32)).train()
    assert model.size_divisibility == 4
    x, t = torch.rand(2, 3, 30, 21), torch.randint(0, 3, (2, 30, 21))
    losses = model(x, t)
    assert set(losses) == {"loss_ce", "loss"}
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unet_timm_matches_smp_parameter_counts():
    # segmentation_models_pytorch 0.6.0: Unet("resnet34", classes=21) and
    # Unet("tu-efficientnet_b0", classes=21) have these many parameters
    assert sum(p.numel() for p in segzoo.build("unet_resnet34").parameters()) == 24_439_269
    assert sum(p.numel() for p in segzoo.build("unet_efficientnet_b0").parameters()) == 5_837_601


def test_unet_timm_decoder_skips():
    model = segzoo.build("unet_resnet34", num_classes=2)
    assert model.skip_index == [3, 2, 1, 0, None]  # layer3, layer2, layer1, stem, none
    assert [b.conv[0][0].in_channels for b in model.decoder] == [
        512 + 256, 256 + 128, 128 + 64, 64 + 64, 32]
    convnext = UNetTimm(num_classes=2, backbone="convnext_atto")  # strides 4..32
    assert convnext.skip_index == [2, 1, 0, None, None]


def test_decoder_channels_argument():
    model = UNetTimm(num_classes=2, backbone="resnet18", decoder_channels=(64, 32, 16, 8, 8))
    assert [b.conv[1][0].out_channels for b in model.decoder] == [64, 32, 16, 8, 8]
    assert model.head.in_channels == 8
    with pytest.raises(ValueError, match="needs 5"):
        UNetTimm(num_classes=2, backbone="resnet18", decoder_channels=(64, 32))


@pytest.mark.parametrize("backbone", SWAP_BACKBONES)
def test_backbone_swap_train_and_odd_sizes(backbone):
    model = segzoo.build("unet_resnet34", num_classes=3, backbone=backbone,
                         decoder_channels=[64, 32, 16, 16, 8]).train()
    assert model.spec.kwargs["backbone"] == backbone
    x, t = torch.rand(2, 3, 67, 45), torch.randint(0, 3, (2, 67, 45))
    model(x, t)["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 33, 100)).shape == (1, 3, 33, 100)


@pytest.mark.parametrize("name", ["unet_resnet18", "unet_resnet50", "unet_efficientnet_b0",
                                  "unet_convnext_tiny"])
def test_registered_encoders_forward(name):
    model = segzoo.build(name, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 70)).shape == (1, 2, 64, 70)


def test_class_layers_reinitialised(tmp_path):
    model = segzoo.build("unet", num_classes=2, channels=[8, 16])
    segzoo.save(model, tmp_path / "u.safetensors")
    with pytest.warns(UserWarning, match="classifier"):
        other = segzoo.build("unet", num_classes=5, channels=[8, 16],
                             weights=tmp_path / "u.safetensors")
    assert isinstance(other.classifier, nn.Conv2d) and other.classifier.out_channels == 5
    torch.testing.assert_close(other.stem[0][0].weight, model.stem[0][0].weight)
