"""ModulatedDeformConv2d against a direct evaluation of the DCNv2 formula."""

import pytest
import torch
from torch import nn
from torchvision.ops import deform_conv2d

from segzoo.layers.dcn import ModulatedDeformConv2d, deform_conv2d_by_sampling


def bilinear_dcnv2(img: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """DCNv2's sampling: zero outside (-1, H) x (-1, W), missing corners count as zero.

    img: C x H x W; y, x: any shape P. Returns C x P.
    """
    c, h, w = img.shape
    inside = (y > -1) & (x > -1) & (y < h) & (x < w)
    y0, x0 = torch.floor(y), torch.floor(x)
    out = img.new_zeros(c, *y.shape)
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            wy = (y - y0) if dy else (1 - (y - y0))
            wx = (x - x0) if dx else (1 - (x - x0))
            ok = inside & (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            v = img[:, yy.clamp(0, h - 1).long(), xx.clamp(0, w - 1).long()]
            out += v * (wy * wx * ok)
    return out


def reference(layer: ModulatedDeformConv2d, inp: torch.Tensor) -> torch.Tensor:
    """out[o, p] = bias[o] + sum_{c, t} W[o, c, t] * mask[t, p] * x_c(p0 + p_t + dp_t)."""
    raw = layer.conv_offset_mask(inp)
    k = layer.kernel_size[0] * layer.kernel_size[1]
    # DCNv2: the first 2k channels are the offsets (2t: dy, 2t+1: dx), the last k the mask
    off, mask = raw[:, : 2 * k], torch.sigmoid(raw[:, 2 * k:])
    n, _, ho, wo = raw.shape
    sh, sw = layer.stride
    ph, pw = layer.padding
    dh, dw = layer.dilation
    base_y = (torch.arange(ho) * sh - ph).view(ho, 1).float()
    base_x = (torch.arange(wo) * sw - pw).view(1, wo).float()
    outs = []
    for b in range(n):
        acc = layer.bias.view(-1, 1, 1).expand(-1, ho, wo).clone()
        for i in range(layer.kernel_size[0]):
            for j in range(layer.kernel_size[1]):
                t = i * layer.kernel_size[1] + j
                y = base_y + i * dh + off[b, 2 * t]
                x = base_x + j * dw + off[b, 2 * t + 1]
                col = bilinear_dcnv2(inp[b], y, x) * mask[b, t]  # C x Ho x Wo
                acc = acc + torch.einsum("oc,chw->ohw", layer.weight[:, :, i, j], col)
        outs.append(acc)
    return torch.stack(outs)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_matches_dcnv2_formula(stride, padding, dilation):
    layer = ModulatedDeformConv2d(5, 4, 3, stride=stride, padding=padding, dilation=dilation).double()
    with torch.no_grad():  # non-zero offsets (several pixels, some outside) and masks
        nn.init.normal_(layer.conv_offset_mask.weight, std=0.5)
        nn.init.normal_(layer.conv_offset_mask.bias, std=2.0)
        nn.init.normal_(layer.bias)
    x = torch.randn(2, 5, 9, 11, dtype=torch.float64)
    out = layer(x)
    ref = reference(layer, x)
    assert out.shape == ref.shape == nn.Conv2d(5, 4, 3, stride, padding, dilation)(x.float()).shape
    assert (out - ref).abs().max() < 1e-10
    # both kernels: grid_sample + matmul (CPU and ONNX) and torchvision's (CUDA)
    offset, mask = layer.offsets_and_mask(x)
    by_sampling = deform_conv2d_by_sampling(x, offset, mask, layer.weight, layer.bias, stride=layer.stride,
                                            padding=layer.padding, dilation=layer.dilation)
    assert (by_sampling - ref).abs().max() < 1e-10
    tv = deform_conv2d(x, offset, layer.weight, layer.bias, stride=layer.stride, padding=layer.padding,
                       dilation=layer.dilation, mask=mask)
    assert (tv - ref).abs().max() < 1e-10


def test_sampling_path_with_deformable_groups():
    layer = ModulatedDeformConv2d(6, 4, deformable_groups=3)
    nn.init.normal_(layer.conv_offset_mask.weight, std=0.3)
    x = torch.randn(2, 6, 7, 5)
    offset, mask = layer.offsets_and_mask(x)
    by_sampling = deform_conv2d_by_sampling(x, offset, mask, layer.weight, layer.bias)
    tv = deform_conv2d(x, offset, layer.weight, layer.bias, padding=(1, 1), mask=mask)
    assert (by_sampling - tv).abs().max() < 1e-5


def test_cpu_forward_uses_the_sampling_kernel(monkeypatch):
    import segzoo.layers.dcn as dcn

    def fail(*args, **kwargs):
        raise AssertionError("torchvision's deform_conv2d ran on CPU")

    monkeypatch.setattr(dcn, "deform_conv2d", fail)
    layer = ModulatedDeformConv2d(3, 4)
    layer(torch.randn(1, 3, 6, 6)).sum().backward()  # forward and backward
    assert layer.conv_offset_mask.weight.grad is not None


def test_zero_offsets_is_half_masked_conv():
    layer = ModulatedDeformConv2d(3, 6)
    x = torch.randn(1, 3, 8, 8)
    plain = nn.functional.conv2d(x, layer.weight * 0.5, layer.bias, padding=1)
    assert torch.allclose(layer(x), plain, atol=1e-5)


def test_layout_and_gradients():
    layer = ModulatedDeformConv2d(4, 8, deformable_groups=2)
    keys = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert keys == {"weight": (8, 4, 3, 3), "bias": (8,), "conv_offset_mask.weight": (54, 4, 3, 3),
                    "conv_offset_mask.bias": (54,)}
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    nn.init.normal_(layer.conv_offset_mask.weight, std=0.1)
    layer(x).sum().backward()
    assert layer.conv_offset_mask.weight.grad.abs().sum() > 0 and x.grad is not None
    with pytest.raises(ValueError, match="deformable_groups"):
        ModulatedDeformConv2d(5, 8, deformable_groups=2)
