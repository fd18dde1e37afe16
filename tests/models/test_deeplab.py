"""DeepLabV3 / DeepLabV3+: structure, parameter count, backbone swaps, losses."""

import pytest
import torch
from torch import nn

import segzoo
from segzoo.layers import ASPP
from segzoo.models.deeplab import DeepLabV3, DeepLabV3Plus

SWAP_BACKBONES = ["resnet18", "convnext_atto", "mobilenetv3_small_100"]


def _train_step(model, size=(67, 75), batch=2):
    """Forward + backward in train mode at an odd size; returns the losses."""
    model.train()
    x = torch.rand(batch, 3, *size)
    t = torch.randint(0, model.num_classes, (batch, *size))
    t[:, :3] = 255  # some ignored pixels
    losses = model(x, t)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)
    return losses


def test_registered():
    assert set(segzoo.list_models("deeplab*")) >= {
        "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenetv3_large",
        "deeplabv3plus_resnet50", "deeplabv3plus_resnet101",
    }


def test_deeplabv3_resnet50_param_count_matches_torchvision():
    model = segzoo.build("deeplabv3_resnet50", num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == 42_004_074


@pytest.mark.parametrize("name", ["deeplabv3_resnet101", "deeplabv3_mobilenetv3_large",
                                  "deeplabv3plus_resnet50", "deeplabv3plus_resnet101"])
def test_registered_models_forward(name):
    model = segzoo.build(name, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 65, 64))
    assert out.shape == (1, 3, 65, 64)
    assert model.spec.name == name


def test_deeplabv3_head_layout():
    model = segzoo.build("deeplabv3_resnet50", num_classes=4)
    aspp = model.classifier[0]
    assert isinstance(aspp, ASPP) and aspp.rates == (12, 24, 36)
    # 1x1 branch, three atrous 3x3 branches, image pooling; all 2048 -> 256
    assert len(aspp.convs) == 5
    assert [aspp.convs[i][0].dilation for i in (1, 2, 3)] == [(12, 12), (24, 24), (36, 36)]
    assert aspp.convs[0][0].kernel_size == (1, 1) and aspp.convs[0][0].in_channels == 2048
    assert isinstance(aspp.convs[4][0], nn.AdaptiveAvgPool2d)
    assert aspp.project[0].in_channels == 5 * 256 and aspp.project[3].p == 0.5
    assert model.classifier[4].out_channels == 4
    assert model.aux_classifier[0].in_channels == 1024  # layer3
    # dilated backbone at output stride 8
    feats = model.backbone(torch.rand(1, 3, 64, 64))
    assert feats[-1].shape[-2:] == (8, 8)


def test_rates_follow_output_stride():
    m16 = DeepLabV3(num_classes=2, backbone="resnet18", output_stride=16)
    assert m16.classifier[0].rates == (6, 12, 18)
    m8 = DeepLabV3Plus(num_classes=2, backbone="resnet18", output_stride=8)
    assert m8.decoder.aspp.rates == (12, 24, 36)


def test_deeplabv3plus_layout():
    model = segzoo.build("deeplabv3plus_resnet50", num_classes=5).eval()
    dec = model.decoder
    assert dec.aspp.rates == (6, 12, 18) and dec.aspp.out_channels == 256
    # 48-channel projection of the stride-4 feature (ResNet layer1, 256 channels)
    assert model.backbone.decoder_channels() == (2048, 256)
    assert dec.low_proj[0].in_channels == 256 and dec.low_proj[0].out_channels == 48
    assert [b[0].kernel_size for b in dec.fuse] == [(3, 3), (3, 3)]
    assert dec.fuse[0][0].in_channels == 256 + 48
    feats = model.backbone(torch.rand(1, 3, 64, 64))
    high, low = model.backbone.decoder_features(feats)
    assert high is feats[-1] and high.shape[-2:] == (4, 4)  # output stride 16
    assert low is feats[1] and low.shape[1:] == (256, 16, 16)  # layer1 (feats[0] is the stride-2 stem)
    assert dec(high, low).shape == (1, 5, 16, 16)


def test_mobilenetv3_large_matches_torchvision_layout():
    model = segzoo.build("deeplabv3_mobilenetv3_large")
    assert model.backbone.channels[-1] == 960
    assert model.aux_classifier[0].in_channels == 40  # stride-8 feature
    assert model.backbone.strides[model.aux_index] == 8
    # torchvision: dilation 2 from the first block of the last stage; BN eps 1e-3
    stage = model.backbone.body.blocks[5]
    assert [b.conv_dw.dilation for b in stage] == [(2, 2)] * 3
    assert stage[0].conv_dw.padding == (4, 4)
    assert model.backbone.body.bn1.eps == 1e-3
    assert model.classifier[0].rates == (12, 24, 36)


@pytest.mark.parametrize("backbone", SWAP_BACKBONES)
@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "deeplabv3plus_resnet50",
                                  "deeplabv3_mobilenetv3_large"])
def test_backbone_swap_train_and_odd_sizes(name, backbone):
    # deeplabv3_mobilenetv3_large declares torchvision's MobileNetV3 layout; other bodies say so
    extra = {"tv_mobilenet": False} if name == "deeplabv3_mobilenetv3_large" else {}
    model = segzoo.build(name, num_classes=3, backbone=backbone, **extra)
    losses = _train_step(model)
    has_aux = name.startswith("deeplabv3_")
    assert ("loss_aux" in losses) == has_aux
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 61, 90)).shape == (1, 3, 61, 90)


def test_aux_loss_weight_and_off():
    model = DeepLabV3(num_classes=3, backbone="resnet18", aux_weight=0.3)
    losses = _train_step(model)
    torch.testing.assert_close(losses["loss"], losses["loss_ce"] + 0.3 * losses["loss_aux"])
    off = DeepLabV3(num_classes=3, backbone="resnet18", aux_loss=False)
    assert off.aux_classifier is None and "loss_aux" not in _train_step(off)


def test_batch_of_one_in_training_says_how_to_fix():
    model = DeepLabV3(num_classes=3, backbone="resnet18").train()
    with pytest.raises(ValueError, match="batch size >= 2"):
        model(torch.rand(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.long))
    model.eval()
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    model.train().backbone.freeze(bn=False, params=True)
    model.classifier[0].convs[4][2].eval()  # frozen statistics in the pooling branch: fine
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_user_errors():
    with pytest.raises(ValueError, match="aux_index"):
        DeepLabV3(num_classes=3, backbone="resnet18", aux_index=7)
    with pytest.raises(TypeError, match="rates"):
        segzoo.build("deeplabv3_resnet50", rate=(1, 2, 3))
    with pytest.raises(ValueError, match="tv_mobilenet"):
        DeepLabV3(num_classes=3, backbone="resnet18", tv_mobilenet=True)
    with pytest.raises(ValueError, match="tv_mobilenet=False"):  # explicit, never guessed from a name
        segzoo.build("deeplabv3_mobilenetv3_large", num_classes=3, backbone="resnet18")


def test_checkpoint_round_trip_and_class_layers(tmp_path):
    model = segzoo.build("deeplabv3plus_resnet50", num_classes=3, backbone="resnet18").eval()
    path = tmp_path / "m.safetensors"
    segzoo.save(model, path)
    loaded = segzoo.load(path).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.warns(UserWarning, match="decoder.classifier"):
        other = segzoo.build("deeplabv3plus_resnet50", num_classes=7, backbone="resnet18",
                             weights=path)
    assert other.decoder.classifier.out_channels == 7
    torch.testing.assert_close(other.decoder.fuse[0][0].weight, model.decoder.fuse[0][0].weight)


def test_deeplabv3plus_uses_atrous_separable_convolutions():
    """The paper's ASPP branches and decoder convs are depthwise-separable (plain with separable=False)."""
    with torch.device("meta"):
        model = segzoo.build("deeplabv3plus_resnet50", num_classes=21)
        plain = segzoo.build("deeplabv3plus_resnet50", num_classes=21, separable=False)
    dec = model.decoder
    for branch, rate in zip(dec.aspp.convs[1:4], (6, 12, 18)):
        dw, pw = branch[0], branch[3]
        assert dw.groups == dw.in_channels == 2048 and dw.dilation == (rate, rate) and pw.kernel_size == (1, 1)
    assert all(block[0].groups == block[0].in_channels for block in dec.fuse)
    assert dec.fuse[0][3].out_channels == 256
    # smp's DeepLabV3Plus(resnet50, classes=21) has 26,682,725: the same minus the BN between
    # depthwise and pointwise (13,408 parameters) that segzoo keeps, as mmsegmentation does
    assert sum(p.numel() for p in model.parameters()) == 26_696_133
    assert sum(p.numel() for p in plain.parameters()) == 40_352_181
    assert plain.decoder.aspp.convs[1][0].groups == 1
