import pytest
import torch

import segzoo


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_fcn_resnet50_parameter_count_matches_torchvision():
    assert count(segzoo.build("fcn_resnet50", num_classes=21)) == 35_322_218


def test_fcn_resnet101_parameter_count_matches_torchvision():
    from torchvision.models.segmentation import fcn_resnet101

    tv = fcn_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    assert count(segzoo.build("fcn_resnet101", num_classes=21)) == count(tv)


@pytest.mark.parametrize("backbone", ["resnet18", "convnext_tiny", "mobilenetv3_large_100"])
@pytest.mark.parametrize("size", [(64, 64), (61, 75)])
def test_backbone_swap_forward_backward(backbone, size):
    model = segzoo.build("fcn_resnet50", num_classes=4, backbone=backbone)
    x = torch.rand(2, 3, *size)
    target = torch.randint(0, 4, (2, *size))
    target[0, :3] = 255
    losses = model(x, target)
    assert set(losses) == {"loss", "loss_ce", "loss_aux"}
    torch.testing.assert_close(losses["loss"], losses["loss_ce"] + 0.5 * losses["loss_aux"])
    losses["loss"].backward()
    assert model.classifier[4].weight.grad is not None
    assert model.aux_classifier[4].weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 4, *size)


def test_return_type_depends_on_targets_not_mode():
    model = segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18", aux_loss=False)
    x = torch.rand(1, 3, 32, 32)
    model.train()
    assert isinstance(model(x), torch.Tensor)
    model.eval()
    losses = model(x, torch.zeros(1, 32, 32, dtype=torch.long))
    assert set(losses) == {"loss", "loss_ce"}


def test_all_ignored_target_gives_zero_loss_not_nan():
    model = segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18")
    losses = model(torch.rand(1, 3, 32, 32), torch.full((1, 32, 32), 255))
    assert torch.isfinite(losses["loss"]) and losses["loss"].item() == 0.0


def test_bad_inputs_and_targets_have_clear_errors():
    model = segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18")
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="add a batch dimension"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="target has value 7 but num_classes=3"):
        model(torch.rand(1, 3, 32, 32), torch.full((1, 32, 32), 7))
    with pytest.raises(ValueError, match="0/255 binary mask"):
        t = torch.zeros(1, 32, 32, dtype=torch.long)
        t[0, 0, 0] = 255
        t[0, 1, 1] = 1
        m2 = segzoo.build("fcn_resnet50", num_classes=2, backbone="resnet18", ignore_index=254)
        m2(torch.rand(1, 3, 32, 32), t)
    with pytest.raises(ValueError, match="shape"):
        model(torch.rand(1, 3, 32, 32), torch.zeros(1, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="same-size images"):
        model([torch.rand(3, 32, 32), torch.rand(3, 16, 32)])
