import pytest
import timm
import torch

import segzoo
from segzoo.backbones import Backbone, HRNetBackbone, TimmBackbone, make_backbone
from segzoo.backbones.hrnet import hrnet_backbone
from segzoo.checkpoint import CheckpointError, save_state_dict


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_dilates(output_stride):
    bb = TimmBackbone("resnet18", output_stride=output_stride)
    feats = bb(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(bb.channels)
    assert bb.strides[-1] == output_stride
    assert feats[-1].shape[-1] == 64 // output_stride


def test_out_indices_and_bad_name():
    bb = TimmBackbone("resnet18", out_indices=(-2, -1))
    assert bb.channels == (256, 512) and bb.strides == (16, 32)
    with pytest.raises(ValueError, match="unknown timm backbone"):
        TimmBackbone("resnet_does_not_exist")
    with pytest.raises(ValueError, match="output_stride must be"):
        TimmBackbone("resnet18", output_stride=4)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_loads_local_timm_weights_and_ignores_classifier(tmp_path, suffix):
    ref = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(ref.state_dict(), path)
    else:
        save_state_dict(ref.state_dict(), path)
    bb = TimmBackbone("resnet18", weights=path)
    torch.testing.assert_close(bb.body.conv1.weight, ref.conv1.weight)
    torch.testing.assert_close(bb.body.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)


def test_wrong_weights_file_is_named(tmp_path):
    ref = timm.create_model("resnet34", pretrained=False)
    path = tmp_path / "r34.safetensors"
    save_state_dict(ref.state_dict(), path)
    with pytest.raises(CheckpointError, match="fit timm 'resnet34', but the backbone is 'resnet18'"):
        TimmBackbone("resnet18", weights=path)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        TimmBackbone("resnet18", weights=tmp_path / "missing.safetensors")


def test_freeze_makes_bn_frozen_and_params_fixed():
    bb = TimmBackbone("resnet18").freeze(bn=True)
    assert not any(p.requires_grad for p in bb.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
    bb.train()
    x = torch.rand(2, 3, 32, 32)
    bb.eval()
    ref = [f.clone() for f in bb(x)]
    bb.train()  # frozen BN behaves the same in train mode
    for a, b in zip(ref, bb(x)):
        torch.testing.assert_close(a, b)


def test_one_weight_loader_and_one_freeze_for_every_backbone():
    assert TimmBackbone.load_weights is Backbone.load_weights is HRNetBackbone.load_weights
    assert TimmBackbone.freeze is Backbone.freeze is HRNetBackbone.freeze


@pytest.mark.parametrize("name, stages", [("resnet18", 5), ("hrnet_w18_small", 5), ("convnext_atto", 4)])
def test_freeze_stages_counts_from_the_stem(name, stages):
    bb = make_backbone(name)
    assert bb.num_stages == stages
    params = list(bb.named_parameters())
    bb.freeze_stages(0)
    assert all(p.requires_grad for _, p in params)
    bb.freeze_stages(1)  # the stem
    frozen = [k for k, p in params if not p.requires_grad]
    assert frozen and frozen == [k for k, _ in params[:len(frozen)]]  # a prefix in forward order
    assert params[-1][1].requires_grad
    bb.freeze_stages(stages)
    assert not any(p.requires_grad for _, p in params)
    with pytest.raises(ValueError, match="can freeze 0 to"):
        bb.freeze_stages(stages + 1)


def test_hrnet_name_is_the_same_network_in_every_family():
    x = torch.rand(2, 3, 64, 64)
    fcn = segzoo.build("fcn_resnet50", num_classes=3, backbone="hrnet_w18_small")
    rcnn = segzoo.build("maskrcnn_resnet50_fpn", num_classes=3, backbone="hrnet_w18_small", fpn_channels=32,
                        representation_size=64, mask_layers=(32,))
    centernet = segzoo.build("centernet_resnet18", num_classes=3, backbone="hrnet_w18_small")
    unet = segzoo.build("unet_resnet18", num_classes=3, backbone="hrnet_w18_small")
    shapes = {k: v.shape for k, v in hrnet_backbone("hrnet_w18_small").state_dict().items()}
    for model in (fcn, rcnn, centernet, unet):
        assert isinstance(model.backbone, HRNetBackbone) and model.backbone.strides == (4, 8, 16, 32)
        assert {k: v.shape for k, v in model.backbone.state_dict().items()} == shapes
    # FCN reads the HRNetV2 concatenation (16+32+64+128 channels) and, auxiliary, the stride-32 branch
    assert fcn.classifier[0].in_channels == 240 and fcn.aux_classifier[0].in_channels == 128
    # Mask R-CNN's FPN reads the four branches as C2-C5, and trains through them
    assert rcnn.fpn.strides == (4, 8, 16, 32, 64)
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0]])
    masks = torch.zeros(1, 64, 64)
    masks[0, 6:50, 4:40] = 1
    targets = [{"boxes": boxes, "labels": torch.tensor([1]), "masks": masks}] * 2
    rcnn(x, targets)["loss"].backward()
    assert rcnn.backbone.conv1.weight.grad is not None
    with torch.no_grad():
        assert rcnn.eval()(x)[0]["masks"].shape[-2:] == (64, 64)
        assert unet.eval()(x).shape == (2, 3, 64, 64)
        assert len(centernet.eval()(x)) == 2


def test_mask_rcnn_trainable_layers_on_an_hrnet_body():
    model = segzoo.build("maskrcnn_resnet50_fpn", num_classes=3, backbone="hrnet_w18_small", fpn_channels=32,
                         trainable_backbone_layers=2)
    bb = model.backbone
    assert not bb.conv1.weight.requires_grad and not bb.transition1[0][0].weight.requires_grad
    assert bb.transition2[2][0][0].weight.requires_grad and bb.stage4[0].branches[0][0].conv1.weight.requires_grad
