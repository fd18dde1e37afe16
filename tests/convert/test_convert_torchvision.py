import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models.segmentation import fcn_resnet50

import segzoo
from segzoo.convert import from_torchvision

ROOT = Path(__file__).resolve().parents[2]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


@pytest.fixture(scope="module")
def tv_fcn():
    torch.manual_seed(0)
    return randomize_bn(fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=7)).eval()


def test_fcn_logits_match_torchvision(tv_fcn):
    model = from_torchvision(tv_fcn.state_dict(), "fcn_resnet50")
    assert model.num_classes == 7
    x = torch.rand(1, 3, 160, 224)
    with torch.no_grad():
        ref = tv_fcn((x - MEAN) / STD)
        out = model(x)
        losses = model(x, torch.zeros(1, 160, 224, dtype=torch.long))
    assert (out - ref["out"]).abs().max() < 1e-4
    assert "loss_aux" in losses


def test_convert_cli_writes_loadable_checkpoint(tv_fcn, tmp_path):
    src, dst = tmp_path / "fcn.pth", tmp_path / "fcn.safetensors"
    torch.save({"model": tv_fcn.state_dict()}, src)
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools/convert.py"), "--from", "torchvision", "--name", "fcn_resnet50",
         "--classes", '["a","b","c","d","e","f","g"]', str(src), str(dst)],
        capture_output=True, text=True, check=True,
    )
    assert "num_classes=7" in r.stdout
    model = segzoo.load(dst)
    assert model.classes[-1] == "g"
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert (model(x) - tv_fcn((x - MEAN) / STD)["out"]).abs().max() < 1e-4


def test_wrong_state_dict_is_rejected():
    with pytest.raises(KeyError, match="unexpected key"):
        from_torchvision({"roi_heads.box_head.fc6.weight": torch.zeros(1)}, "fcn_resnet50")
    with pytest.raises(KeyError, match="unknown model"):
        from_torchvision({}, "fcn_resnet5000")


@pytest.fixture
def fcn_convnext_tiny():
    """A new FCN entrypoint on another backbone, registered for this test only."""
    from segzoo import registry
    from segzoo.models.fcn import FCN

    @registry.register_model
    def fcn_convnext_tiny(**kwargs) -> FCN:
        return registry.create(FCN, "fcn_convnext_tiny", {"backbone": "convnext_tiny"}, kwargs)

    yield "fcn_convnext_tiny"
    del registry._REGISTRY["fcn_convnext_tiny"]


def test_mapper_follows_the_model_class_and_refuses_another_backbone(tv_fcn, fcn_convnext_tiny):
    # the FCN mapper is chosen by class; the ResNet weights do not fit a ConvNeXt body: a clear error
    with pytest.raises(ValueError, match=r"holds a torchvision FCN with a ResNet-50 backbone but 'fcn_convnext_tiny' "
                                         r"builds a FCN with backbone 'convnext_tiny'.*fcn_resnet50"):
        from_torchvision(tv_fcn.state_dict(), fcn_convnext_tiny)
    with pytest.raises(ValueError, match="ResNet-50 backbone .* backbone 'resnet18'"):
        from_torchvision(tv_fcn.state_dict(), "fcn_resnet50", backbone="resnet18")
    with pytest.raises(ValueError, match="torchvision has no UNetTimm"):
        from_torchvision(tv_fcn.state_dict(), "unet_resnet34")
