"""timm's Swin blocks with the window order of the Swin segmentation and detection code.

timm's ``SwinTransformerBlock`` shifts a map cyclically and then pads it to whole windows; the
Swin code of the segmentation papers (Swin-Transformer-Semantic-Segmentation, detectron2's
Mask2Former, Hugging Face's ``SwinBackbone``) pads first and shifts the padded map. Both are the
same where every stage is a whole number of windows (224 px for Swin-T); elsewhere the windows
hold other pixels, and weights trained one way give other outputs the other way.
:func:`pad_before_shift` makes a timm Swin body pad first, so that published segmentation weights
(``facebook/mask2former-swin-*``) give their outputs at any input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from torch import nn


class PadFirstSwinBlock(SwinTransformerBlock):
    """A timm Swin block that pads to whole windows before its cyclic shift (see the module docstring);
    the shifted-window mask is built for the padded map on each forward."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, c = x.shape  # (B, H, W, C)
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (-w) % ww, 0, (-h) % wh))
        _, hp, wp, _ = x.shape
        shifted = any(self.shift_size)
        if shifted:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, c)  # (B * nW, wh * ww, C)
        mask = self.get_attn_mask(x) if shifted else None  # the regions of the padded map
        out = window_reverse(self.attn(windows, mask=mask).view(-1, wh, ww, c), self.window_size, hp, wp)
        if shifted:
            out = torch.roll(out, shifts=self.shift_size, dims=(1, 2))
        return out[:, :h, :w].contiguous()


def pad_before_shift(body: nn.Module) -> int:
    """Make every timm ``SwinTransformerBlock`` of ``body`` a :class:`PadFirstSwinBlock` (in place: the
    same parameters and names); returns how many blocks changed (0 for a body without Swin blocks)."""
    n = 0
    for m in body.modules():
        if type(m) is SwinTransformerBlock:
            m.__class__ = PadFirstSwinBlock
            n += 1
    return n
