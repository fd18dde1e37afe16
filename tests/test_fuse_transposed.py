"""BatchNorm folded into a preceding transposed convolution (CenterNet's deconvolution stages, U-Net-style ups)."""

import pytest
import torch
from torch import nn

import segzoo
from segzoo.fuse import fuse


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(1 + torch.randn(n, generator=g) * 0.3)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("groups,bias", [(1, False), (1, True), (2, False), (4, True)])
def test_transposed_conv_bn_folds_exactly(groups, bias):
    torch.manual_seed(0)
    m = nn.Sequential(nn.ConvTranspose2d(8, 12, 4, stride=2, padding=1, groups=groups, bias=bias),
                      nn.BatchNorm2d(12), nn.ReLU())
    _randomize_bn(m).eval()
    f = fuse(m, torch.rand(1, 8, 5, 5))
    assert f.fused_pairs == [("0", "1")]
    assert isinstance(f[1], nn.Identity) and f[0].bias is not None
    for size in ((5, 5), (7, 3)):
        x = torch.randn(2, 8, *size)
        with torch.no_grad():
            torch.testing.assert_close(f(x), m(x), rtol=1e-5, atol=1e-5)


def test_transposed_conv_feeding_two_consumers_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(3, 4, 2, stride=2)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.up(x)
            return self.bn(y) + y

    m = _randomize_bn(Branchy()).eval()
    assert fuse(m, torch.rand(1, 3, 4, 4)).fused_pairs == []


@pytest.mark.parametrize("name", ["centernet_resnet18", "centernet_resdcn18"])
def test_centernet_deconv_stages_fold_and_keep_the_maps(name):
    torch.manual_seed(0)
    model = _randomize_bn(segzoo.build(name, num_classes=3, backbone="resnet18")).eval()
    fused = fuse(model)
    ups = [n for n, mod in model.named_modules() if isinstance(mod, nn.ConvTranspose2d)]
    assert len(ups) == 3 and {c for c, _ in fused.fused_pairs} >= set(ups)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.neck.layers[-3:])
    for size in ((64, 64), (75, 101)):
        x = model.preprocess(torch.rand(1, 3, *size))[0]
        with torch.no_grad():
            ref, got = model.forward_maps(x), fused.forward_maps(x)
        for k in ref:
            scale = max(1.0, float(ref[k].abs().max()))
            assert (got[k] - ref[k]).abs().max() < 1e-4 * scale, k
