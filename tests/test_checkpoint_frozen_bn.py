"""A checkpoint of a model trained with train.freeze_backbone_bn loads (FrozenBatchNorm2d has no step counter)."""

from __future__ import annotations

import torch

import segzoo


def test_a_model_saved_with_frozen_backbone_bn_loads_and_predicts_the_same(tmp_path):
    torch.manual_seed(0)
    model = segzoo.build("unet_resnet18", num_classes=2).eval()
    model.backbone.freeze(bn=True, params=False)   # what train.freeze_backbone_bn does
    assert not any(k.endswith("num_batches_tracked") for k in model.backbone.state_dict())
    segzoo.save(model, tmp_path / "m.safetensors")
    loaded = segzoo.load(tmp_path / "m.safetensors").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
