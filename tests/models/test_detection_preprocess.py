"""DetectionModel.preprocess: the normalised, zero-padded batch, never the caller's tensor."""

import pytest
import torch

import segzoo


@pytest.mark.parametrize("size", [(64, 64), (60, 70)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_preprocess_normalises_pads_and_never_returns_the_input(size, layout):
    model = segzoo.build("centernet_resnet18", num_classes=3).eval()
    d = model.size_divisibility
    x = torch.rand(2, 3, *size).contiguous(memory_format=layout)
    before = x.clone()
    batch, sizes = model.preprocess(x)
    h, w = size
    assert batch.shape == (2, 3, h + (-h) % d, w + (-w) % d)
    assert torch.equal(sizes, torch.tensor([[h, w], [h, w]]))
    assert torch.equal(batch[..., :h, :w], (x - model.pixel_mean) / model.pixel_std)  # bit for bit
    assert not batch[..., h:, :].any() and not batch[..., w:].any()  # zero padding after the normalisation
    assert batch.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()  # a new tensor, even unpadded
    batch.add_(1)  # writing into the batch leaves the caller's images alone
    assert torch.equal(x, before)
