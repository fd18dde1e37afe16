"""HRNetV2 and HRNet + OCR: published sizes, bilinear fusion, timm equivalence, backbone use."""

import pytest
import timm
import torch
import torch.nn.functional as F

import segzoo
from segzoo.backbones import Backbone
from segzoo.backbones.hrnet import HRModule, hrnet_backbone
from segzoo.checkpoint import CheckpointError, save_state_dict

SMALL = dict(width=16, stage1_blocks=1, stage1_channels=32, stage_modules=(1, 1, 1), stage_blocks=2)
TIMM_HEAD = ("incre_modules", "downsamp_modules", "final_layer", "classifier")


@pytest.mark.parametrize("name, params", [
    ("hrnet_w18_small", 1_540_819),  # HRNet-W18-Small-v1
    ("hrnet_w18_small_v2", 3_939_579),
    ("hrnet_w18", 9_641_119),
    ("hrnet_w48", 65_859_379),
])
def test_parameter_counts_match_official(name, params):
    model = segzoo.build(name, num_classes=19)
    assert sum(p.numel() for p in model.parameters()) == params


def test_all_variants_registered():
    names = set(segzoo.list_models("hrnet_*"))
    assert {"hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w18", "hrnet_w32", "hrnet_w48",
            "hrnet_w48_ocr"} <= names
    assert segzoo.build("hrnet_w32").num_classes == 19


def _timm_branches(model, x):
    x = model.act2(model.bn2(model.conv2(model.act1(model.bn1(model.conv1(x))))))
    return model.stages(x)


def test_nearest_fusion_equals_timm_bilinear_does_not(tmp_path):
    ref = timm.create_model("hrnet_w18_small", pretrained=False).eval()
    path = tmp_path / "hrnet_w18_small.safetensors"
    save_state_dict(ref.state_dict(), path)  # full timm file, classifier included
    nearest = hrnet_backbone("hrnet_w18_small", weights=path, fuse_mode="nearest").eval()
    bilinear = hrnet_backbone("hrnet_w18_small", weights=path).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = _timm_branches(ref, x)
        got_nearest = nearest(x)
        got_bilinear = bilinear(x)
    for e, n in zip(expected, got_nearest):
        torch.testing.assert_close(n, e, rtol=0, atol=1e-5)
    assert max((e - b).abs().max().item() for e, b in zip(expected, got_bilinear)) > 1e-2


def test_body_keys_equal_timm_body_keys():
    for name in ("hrnet_w18_small_v2", "hrnet_w18"):
        ref = timm.create_model(name, pretrained=False).state_dict()
        ref = {k: v.shape for k, v in ref.items() if not k.startswith(TIMM_HEAD)}
        own = {k: v.shape for k, v in hrnet_backbone(name).state_dict().items()}
        assert own == ref


@pytest.mark.parametrize("align_corners", [False, True])
def test_fuse_upsamples_bilinearly_to_branch_size(align_corners):
    module = HRModule([8, 16, 32], num_blocks=1, fuse_mode="bilinear", align_corners=align_corners).eval()
    xs = [torch.randn(1, 8, 13, 11), torch.randn(1, 16, 7, 6), torch.randn(1, 32, 4, 3)]
    with torch.no_grad():
        out = module([x.clone() for x in xs])
        b = [branch(x) for branch, x in zip(module.branches, xs)]
        f = module.fuse_layers

        def up(t, like):
            return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=align_corners)

        y0 = b[0] + up(f[0][1](b[1]), b[0]) + up(f[0][2](b[2]), b[0])
        y1 = f[1][0](b[0]) + b[1] + up(f[1][2](b[2]), b[1])
        y2 = f[2][0](b[0]) + f[2][1](b[1]) + b[2]
    for o, y in zip(out, (y0, y1, y2)):
        torch.testing.assert_close(o, y.relu())
    assert [o.shape[-2:] for o in out] == [x.shape[-2:] for x in xs]


def test_forward_any_size_and_losses():
    model = segzoo.build("hrnet_w18_small", num_classes=5)
    x = torch.rand(2, 3, 75, 101)
    out = model(x)
    assert out.shape == (2, 5, 75, 101)
    target = torch.randint(0, 5, (2, 75, 101))
    target[0, :10] = 255
    losses = model(x, target)
    assert set(losses) == {"loss_ce", "loss"}
    losses["loss"].backward()
    assert model.backbone.conv1.weight.grad is not None and model.head[3].weight.grad is not None


def test_align_corners_is_an_argument():
    a = segzoo.build("hrnet_w18_small", num_classes=3).eval()
    b = segzoo.build("hrnet_w18_small", num_classes=3, align_corners=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max() > 1e-4


def test_ocr_forward_and_aux_loss():
    model = segzoo.build("hrnet_w48_ocr", num_classes=4, mid_channels=32, key_channels=16, **SMALL)
    assert model.align_corners is True and model.aux_weight == 0.4
    x = torch.rand(2, 3, 64, 80)
    assert model(x).shape == (2, 4, 64, 80)
    losses = model(x, torch.randint(0, 4, (2, 64, 80)))
    assert set(losses) == {"loss_ce", "loss_aux", "loss"}
    torch.testing.assert_close(losses["loss"], losses["loss_ce"] + 0.4 * losses["loss_aux"])
    losses["loss"].backward()
    assert model.head.attention.query[0].weight.grad is not None
    assert model.head.aux[3].weight.grad is not None


def test_ocr_w48_full_size_forward():
    model = segzoo.build("hrnet_w48_ocr").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 19, 64, 64)


def test_backbone_weights_wrong_variant_raise(tmp_path):
    path = tmp_path / "v2.safetensors"
    save_state_dict(timm.create_model("hrnet_w18_small_v2", pretrained=False).state_dict(), path)
    with pytest.raises(CheckpointError, match="same variant"):
        segzoo.build("hrnet_w18_small", backbone_weights=path)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        segzoo.build("hrnet_w18_small", backbone_weights=tmp_path / "missing.pth")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="fuse_mode"):
        segzoo.build("hrnet_w18_small", fuse_mode="bicubic")
    with pytest.raises(TypeError, match="fuse_mode"):
        segzoo.build("hrnet_w18_small", fuse_mod="nearest")
    with pytest.raises(ValueError, match="stage_modules"):
        segzoo.build("hrnet_w18_small", stage_modules=(1, 1))


def test_save_load_round_trip(tmp_path):
    model = segzoo.build("hrnet_w18_small", num_classes=3, fuse_mode="nearest").eval()
    segzoo.save(model, tmp_path / "m.safetensors")
    loaded = segzoo.load(tmp_path / "m.safetensors")
    assert loaded.backbone.fuse_mode == "nearest"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_hrnet_backbone_contract():
    body = hrnet_backbone("hrnet_w18_small")
    assert isinstance(body, Backbone)
    feats = body(torch.randn(1, 3, 64, 96))
    assert body.channels == (16, 32, 64, 128) and body.strides == (4, 8, 16, 32)  # the four branches
    assert [f.shape[1] for f in feats] == list(body.channels)
    assert [96 // f.shape[-1] for f in feats] == list(body.strides)
    # heads that read one map see the branches plus the HRNetV2 concatenation at stride 4
    assert body.head_channels == (16, 32, 64, 128, 240) and body.head_strides == (4, 8, 16, 32, 4)
    assert body.head_maps(feats)[-1].shape[1:] == (240, 16, 24)


def test_fcn_with_hrnet_backbone():
    model = segzoo.build("fcn_resnet50", num_classes=5, backbone="hrnet_w18_small")
    assert model.classifier[0].in_channels == 240 and model.aux_classifier[0].in_channels == 128
    x = torch.rand(2, 3, 64, 64)
    losses = model(x, torch.randint(0, 5, (2, 64, 64)))
    assert set(losses) == {"loss_ce", "loss_aux", "loss"}
    losses["loss"].backward()
    assert model.eval()(x).shape == (2, 5, 64, 64)


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "deeplabv3plus_resnet50"])
def test_deeplab_heads_with_hrnet_backbone(name):
    if name not in segzoo.list_models():
        pytest.skip(f"{name} is not registered in this checkout")
    model = segzoo.build(name, num_classes=5, backbone="hrnet_w18_small")
    x = torch.rand(2, 3, 64, 64)
    model(x, torch.randint(0, 5, (2, 64, 64)))["loss"].backward()
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 5, 64, 64)
