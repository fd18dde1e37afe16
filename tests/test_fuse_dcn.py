"""BatchNorm folded into a preceding DCNv2 layer (CenterNet's ResDCN and DLA-Up necks)."""

import pytest
import torch
from torch import nn

import segzoo
from segzoo.fuse import fuse
from segzoo.layers.dcn import ModulatedDeformConv2d
from tests.test_fuse_transposed import _randomize_bn


def _moving(model, seed=0):
    """Non-zero offsets and masks, so that the deformable sampling is exercised, not a plain conv."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, ModulatedDeformConv2d):
            m.conv_offset_mask.weight.data.copy_(torch.randn(m.conv_offset_mask.weight.shape, generator=g) * 0.1)
            m.conv_offset_mask.bias.data.copy_(torch.randn(m.conv_offset_mask.bias.shape, generator=g))
    return model


def test_dcn_bn_folds_exactly():
    torch.manual_seed(0)
    m = nn.Sequential(ModulatedDeformConv2d(6, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU())
    m = _moving(_randomize_bn(m)).eval()
    f = fuse(m, torch.rand(1, 6, 7, 7))
    assert f.fused_pairs == [("0", "1")] and isinstance(f[1], nn.Identity)
    for shape in ((1, 6, 9, 9), (2, 6, 7, 12)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(f(x), m(x), rtol=1e-5, atol=1e-5)


def test_dcn_feeding_two_consumers_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.dcn = ModulatedDeformConv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.dcn(x)
            return self.bn(y) + y

    m = _randomize_bn(Branchy()).eval()
    assert fuse(m, torch.rand(1, 3, 6, 6)).fused_pairs == []


@pytest.mark.parametrize("name", ["centernet_resdcn18", "centernet_dla34"])
def test_centernet_dcn_necks_fold_every_norm_and_keep_the_maps(name):
    torch.manual_seed(0)
    model = _moving(_randomize_bn(segzoo.build(name, num_classes=3))).eval()
    fused = fuse(model)
    dcns = {n for n, mod in model.named_modules() if isinstance(mod, ModulatedDeformConv2d)}
    assert dcns and dcns <= {c for c, _ in fused.fused_pairs}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.neck.modules())
    x = model.preprocess(torch.rand(1, 3, 72, 104))[0]
    with torch.no_grad():
        ref, out = model.forward_maps(x), fused.forward_maps(x)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4)
