import pytest
import timm
import torch

from segzoo.backbones import TimmBackbone
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
    with pytest.raises(CheckpointError, match="does not fit timm backbone 'resnet18'"):
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
