"""Semantic prediction holds one full-size ``C x H x W`` map, not three (issue 30, item 5).

``semantic_probs`` activates the logits it made itself (upsampled, blended from tiles, flipped) in place, a band of
rows at a time, and the sliding window divides its blend in place; before, the blended logits, their quotient, the
stacked batch and the probabilities were each a full-size float map (three at once at 2048 px with 19 classes:
912 MiB of the tiled path's 1461). Checked: the same values as the path it replaces (written here), and a dispatch
mode that adds up the bytes of live tensors sees less than 1.5 full-size maps at once.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.speed.setpred_memory import LiveBytes
from segzoo.inference import _tta_config, activate, semantic_probs, sliding_window

C = 16


class Quarter(nn.Module):
    """A semantic model computing at a quarter of the input size and upsampling its logits (as DeepLab, SegFormer)."""

    task = "semantic"

    def __init__(self, label_mode: str = "multiclass") -> None:
        super().__init__()
        self.label_mode = label_mode
        self.conv = nn.Conv2d(3, C, 4, stride=4)

    def forward(self, x):
        return F.interpolate(self.conv(x) * 3, size=x.shape[-2:], mode="bilinear", align_corners=False)


class Echo(nn.Module):
    """Returns its input (or a parameter) as logits: nothing of the caller's or the model's may be overwritten."""

    task = "semantic"

    def __init__(self, param: bool = False) -> None:
        super().__init__()
        self.param = param
        self.table = nn.Parameter(torch.rand(1, 3, 40, 50))

    def forward(self, x):
        return self.table if self.param else x


def _old(model, x, tile=None, overlap=0.25, tta=None):
    """The path before: every step a new full-size map."""
    cfg = _tta_config(tta)
    _, _, h, w = x.shape
    probs, n = None, 0
    for s in cfg["scales"]:
        size = (max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5)))
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                    antialias=s < 1).clamp(0, 1)
        for flip in (False, True) if cfg["flip"] else (False,):
            xi = xs.flip(-1) if flip else xs
            if tile is not None:
                logits = torch.stack([sliding_window(model, im[None], tile, overlap, 4) for im in xi])
            else:
                logits = model(xi).float()
            if flip:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = activate(model, logits)
            probs = p if probs is None else probs + p
            n += 1
    return probs / n if n > 1 else probs


@pytest.mark.parametrize("label_mode", ["multiclass", "binary"])
@pytest.mark.parametrize("tile, tta", [(None, None), (96, None), (None, "ms_flip"), (96, "flip")])
def test_same_values_as_the_path_it_replaces(label_mode, tile, tta):
    torch.manual_seed(0)
    model = Quarter(label_mode).eval()
    x = torch.rand(2, 3, 150, 203)  # odd sizes: bands and tiles that do not divide them
    x[0, :, 70:] = 0  # a flat region: tiles and bands that agree
    with torch.inference_mode():
        got = semantic_probs(model, x, tile=tile, tta=tta)
        want = _old(model, x, tile=tile, tta=tta)
    assert got.shape == want.shape == (2, C, 150, 203)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("tile", [None, 64])
def test_one_full_size_map_at_a_time(tile):
    model = Quarter().eval()
    x = torch.rand(1, 3, 256, 256)
    full = C * 256 * 256 * 4  # bytes of one C x H x W float map: 4 MiB
    with torch.inference_mode():
        model(x[..., :64, :64])  # lazy initialisation outside the count
        mode = LiveBytes()
        with mode:
            probs = semantic_probs(model, x, tile=tile, batch_size=1)  # one 64 px tile: 1/16 of a map
    assert probs.untyped_storage().nbytes() == full
    assert mode.peak < 1.5 * full, f"{mode.peak / full:.2f} full-size maps at once"


@pytest.mark.parametrize("param", [False, True])
def test_the_input_and_the_weights_are_not_written(param):
    model = Echo(param).eval()
    x = torch.rand(1, 3, 40, 50)
    before_x, before_w = x.clone(), model.table.detach().clone()
    with torch.inference_mode():
        probs = semantic_probs(model, x)
    torch.testing.assert_close(probs, (before_w if param else before_x).softmax(1))
    assert torch.equal(x, before_x) and torch.equal(model.table.detach(), before_w)


class InferenceOutputs(nn.Module):
    """An optimized model's forward runs under inference_mode: its logits are inference tensors."""

    task = "semantic"

    def __init__(self) -> None:
        super().__init__()
        self.inner = Quarter()

    def forward(self, x):
        with torch.inference_mode():
            return self.inner(x).clone()  # owned by the caller, but not writable outside inference mode


@pytest.mark.parametrize("tta", [None, "flip"])
def test_inference_tensor_logits_outside_inference_mode(tta):
    """segzoo eval runs the optimized copy under no_grad: its logits cannot be written in place there (the in-place
    softmax raised); they are activated into a new tensor, the same values."""
    torch.manual_seed(0)
    model = InferenceOutputs().eval()
    x = torch.rand(2, 3, 40, 52)
    with torch.no_grad():
        got = semantic_probs(model, x, tta=tta)
        want = _old(model.inner, x, tta=tta)
    torch.testing.assert_close(got, want)
    with torch.inference_mode():  # inside inference mode the in-place path stays
        torch.testing.assert_close(semantic_probs(model, x, tta=tta), want)
