"""The HRNet body's head methods: what one-map heads and DeepLabV3+'s decoder read from its branches."""

import torch

import segzoo
from segzoo.backbones.hrnet import hrnet_backbone
from segzoo.layers import resize_concat


def test_head_methods_give_the_representation_and_the_branches():
    body = hrnet_backbone("hrnet_w18_small").eval()  # C = 16: branches 16, 32, 64, 128
    with torch.no_grad():
        feats = body(torch.rand(1, 3, 64, 96))
        maps = body.head_maps(feats)
        high, low = body.decoder_features(feats)
    rep = resize_concat(feats, body.align_corners)
    assert body.head_channels == (16, 32, 64, 128, 240) and body.head_strides == (4, 8, 16, 32, 4)
    assert maps[:4] == feats and torch.equal(maps[-1], rep)
    assert body.decoder_channels() == (240, 16)
    assert torch.equal(high, rep) and low is feats[0] and low.shape[1:] == (16, 16, 24)


def test_deeplabv3plus_on_hrnet_refines_with_the_stride4_branch():
    model = segzoo.build("deeplabv3plus_resnet50", num_classes=5, backbone="hrnet_w18_small").eval()
    assert model.decoder.aspp.convs[0][0].in_channels == 240  # ASPP on the HRNetV2 representation
    assert model.decoder.low_proj[0].in_channels == 16  # the 1x1 projection of the stride-4 branch
    seen = {}
    model.decoder.register_forward_pre_hook(lambda _, args: seen.update(high=args[0], low=args[1]))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        feats = model.backbone(model.normalize(x))
    assert out.shape == (2, 5, 64, 64)
    assert seen["low"].shape == (2, 16, 16, 16) and seen["high"].shape == (2, 240, 16, 16)
    torch.testing.assert_close(seen["low"], feats[0])  # the stride-4 branch itself, not the concatenation
    torch.testing.assert_close(seen["high"], resize_concat(feats))
