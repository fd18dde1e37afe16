"""The Backbone ABC: what a body must implement, and what the base class builds on it."""

import inspect

import pytest
import torch
from torch import nn

from segzoo.backbones import BODIES, Backbone, HRNetBackbone, MiT, TimmBackbone, make_backbone

ABSTRACT = {"channels", "strides", "forward", "stage_prefixes"}


def _members():
    """A complete toy body: a stem conv (stride 2) and a stage (stride 4)."""

    def init(self):
        Backbone.__init__(self)
        self.stem = nn.Conv2d(3, 4, 3, 2, 1)
        self.stage = nn.Conv2d(4, 8, 3, 2, 1)

    def forward(self, x):
        a = self.stem(x)
        return [a, self.stage(a)]

    return {
        "__init__": init,
        "name": "toy",
        "channels": property(lambda self: (4, 8)),
        "strides": (2, 4),  # a class attribute fulfils an abstract property too
        "forward": forward,
        "stage_prefixes": lambda self: [("stem.",), ("stage.",)],
    }


def test_the_abstract_members_are_the_contract():
    assert Backbone.__abstractmethods__ == ABSTRACT
    with pytest.raises(TypeError, match="abstract"):
        Backbone()


@pytest.mark.parametrize("missing", sorted(ABSTRACT))
def test_a_body_missing_an_abstract_member_cannot_be_built(missing):
    members = _members()
    del members[missing]
    partial = type("Partial", (Backbone,), members)
    assert inspect.isabstract(partial)
    with pytest.raises(TypeError, match=missing):
        partial()


def test_a_complete_body_gets_the_base_methods():
    body = type("Toy", (Backbone,), _members())()
    feats = body(torch.rand(1, 3, 16, 16))
    assert [f.shape[1] for f in feats] == list(body.channels)
    assert body.head_maps(feats) is feats and body.head_channels == (4, 8) and body.head_strides == (2, 4)
    high, low = body.decoder_features(feats)
    assert high is feats[-1] and low is feats[1] and body.decoder_channels() == (8, 8)
    with pytest.raises(ValueError, match=r"strides \(2, 4\), none at stride 8"):
        body.decoder_channels(low_stride=8)
    assert body.num_stages == 2
    body.freeze_stages(1)
    assert [p.requires_grad for p in body.parameters()] == [False, False, True, True]
    body.freeze()
    assert not any(p.requires_grad for p in body.parameters())


@pytest.mark.parametrize("cls", [TimmBackbone, HRNetBackbone, MiT])
def test_every_body_implements_the_contract(cls):
    assert not inspect.isabstract(cls)
    assert all(getattr(cls, name) is not getattr(Backbone, name) for name in ABSTRACT)


@pytest.mark.parametrize("name", ["resnet18", *[n for n in BODIES if n in ("hrnet_w18_small", "mit_b0")]])
def test_bodies_describe_their_maps(name):
    body = make_backbone(name).eval()
    with torch.no_grad():
        feats = body(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(body.channels)
    assert [64 // f.shape[-1] for f in feats] == list(body.strides)
    assert body.num_stages == len(body.stage_prefixes())
