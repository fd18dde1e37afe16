"""An optimized model survives ``copy.deepcopy`` and pickling: oneDNN-packed weights have no storage to copy, so the
packed layers (convolutions and linears) pack the copied dense weights again; the copy runs the same packed path."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import segzoo
from segzoo.prepack import PrepackedConv2d, PrepackedLinear


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _tensors(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


@pytest.mark.parametrize("name, kwargs", [
    ("fcn_resnet50", {}),  # prepacked convolutions
    ("fasterrcnn_resnet18_fpn", {"box_score_thresh": 0.0}),  # prepacked convolutions and the packed box head
    ("maskrcnn_resnet18_fpn", {"box_score_thresh": 0.0}),
    ("centernet_resdcn18", {}),
    ("mask2former_resnet18_small", {"num_stuff": 2}),  # prepacked linears
])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_of_an_optimized_model_predict_the_same(name, kwargs, how):
    torch.manual_seed(0)
    fast = segzoo.optimize(segzoo.build(name, num_classes=3, **kwargs).eval())
    clone = copy.deepcopy(fast) if how == "deepcopy" else pickle.loads(pickle.dumps(fast))
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ref, out = _tensors(fast(x)), _tensors(clone(x))
    assert len(out) == len(ref) > 0
    packed = [m for m in clone.modules() if isinstance(m, PrepackedLinear)]
    assert all(m.packed is not None and m.packed.params[0][0] is m.weight for m in packed)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_a_copied_prepacked_convolution_packs_its_own_weight():
    conv = PrepackedConv2d(torch.nn.Conv2d(4, 6, 3, padding=1))
    clone = copy.deepcopy(conv)
    assert clone.packed is not None and clone.packed is not conv.packed
    with torch.no_grad():
        clone.weight.mul_(2.0)
        clone._pack()
        x = torch.randn(1, 4, 9, 9)
        torch.testing.assert_close(clone(x), 2 * (conv(x) - conv.bias.view(1, -1, 1, 1)) + conv.bias.view(1, -1, 1, 1),
                                   rtol=1e-5, atol=1e-5)
    moved = PrepackedConv2d(torch.nn.Conv2d(4, 6, 3).double())
    with pytest.raises(RuntimeError, match="call segzoo.optimize"):
        moved(torch.randn(1, 4, 5, 5))
