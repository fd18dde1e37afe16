"""Prepacked oneDNN linear layers compute what nn.Linear computes; optimize packs them where the table says."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segzoo import prepack as packing
from segzoo.optimize import PREPACK_LINEAR, optimize

pytestmark = pytest.mark.skipif(not packing.available(), reason="no oneDNN in this PyTorch build")


@pytest.mark.parametrize("bias", [True, False])
def test_prepacked_linear_equals_linear(bias):
    torch.manual_seed(0)
    lin = nn.Linear(24, 40, bias=bias)
    packed = packing.PrepackedLinear(lin)
    for x in (torch.randn(7, 24), torch.randn(2, 5, 24), torch.randn(2, 24, 9).transpose(1, 2),
              torch.randn(1, 3, 4, 24)):
        with torch.no_grad():
            torch.testing.assert_close(packed(x), lin(x), rtol=1e-5, atol=1e-5)
    assert packed.weight is lin.weight and "in_features=24" in repr(packed)
    with pytest.raises(RuntimeError, match="float32 CPU"):
        packed(torch.randn(2, 24, dtype=torch.bfloat16))


def test_prepack_packs_linears_only_when_asked_and_leaves_attention_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 8))
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    whole = nn.ModuleDict({"net": model, "attn": attn})
    assert packing.prepack(whole, convs=False, linears=False) == 0
    assert packing.prepack(whole, convs=False, linears=True) == 1
    assert isinstance(model[2], packing.PrepackedLinear) and isinstance(model[0], nn.Conv2d)
    assert type(attn.out_proj) is not packing.PrepackedLinear


def test_optimize_packs_linears_where_the_table_says(monkeypatch):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 5)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    class Wrapper(nn.Module):  # an export wrapper: the table reads its model's class
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

    x = torch.rand(1, 3, 8, 8)
    assert optimize(Net()).choices.prepacked == 0  # "*": False
    monkeypatch.setitem(PREPACK_LINEAR, "cpu", {"*": False, "Net": True})
    net = Net().eval()
    fast = optimize(net)
    assert fast.choices.prepacked == 1 and isinstance(fast.model.fc, packing.PrepackedLinear)
    torch.testing.assert_close(fast(x), net(x).detach())
    assert optimize(Wrapper(Net())).choices.prepacked == 1
    assert optimize(net, bf16=True).choices.prepacked == 0  # bf16 and compile handle weights themselves


def test_prepacked_linear_falls_back_where_the_packed_weights_would_be_wrong():
    """Changed weights and gradients compute F.linear with the layer's own parameters (the same numbers as
    nn.Linear, never a stale packed copy); a deep copy packs its copied, current weights again."""
    import copy

    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    packed = packing.PrepackedLinear(lin)
    x = torch.randn(3, 6)
    with torch.no_grad():
        assert packed.packed.usable(x)
        lin.weight.add_(1.0)  # the packed copy is now stale
        assert not packed.packed.usable(x)
        torch.testing.assert_close(packed(x), lin(x))
        twin = copy.deepcopy(packed)
        assert twin.packed is not None and twin.packed.usable(x)  # packed from the edited weights
        torch.testing.assert_close(twin(x), lin(x))
    y = packed(x)  # gradients on: autograd through the parameters
    y.sum().backward()
    assert lin.weight.grad is not None
