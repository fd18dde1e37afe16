"""CenterNet's three output heads (``heatmap``, ``size``, ``offset``) on the stride-4 map.

Each head is ``3x3 conv -> ReLU -> 1x1 conv`` on the same input, with the official module indices
(``0`` and ``2``: the official ``hm``/``wh``/``reg``), so that checkpoints convert by renaming only.
At inference the three 3x3 convolutions can run as one (see :class:`CenterNetHead`): the same
numbers to float rounding, the ``state_dict`` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.layers.conv import OneDNNPointwiseConv2d
from segzoo.layers.tracing import is_tracing

HEADS = ("heatmap", "size", "offset")


class CenterNetHead(nn.Module):
    """Three small heads on the stride-4 map: ``3x3 conv -> ReLU -> 1x1 conv`` each.

    ``heatmap`` (``num_classes`` logits, last bias -2.19 so that the initial
    probability is 0.1), ``size`` (box width and height in output cells) and ``offset``
    (sub-cell centre x and y). Indices ``0`` and ``2`` match the official ``hm``/``wh``/``reg``.

    Initialisation as the official ``msra_resnet``: every 3x3 convolution keeps PyTorch's default;
    the heatmap's output bias is -2.19, the size and offset output convolutions are drawn from
    normal(0, 0.001) with bias 0. (Until 2026-12 segzoo drew the size and offset heads' 3x3
    convolutions from normal(0, 0.001) too; their hidden features were then ~50x smaller than the
    heatmap head's. Adam's scale-free steps hid most of it: on the tree crowns that size head read a
    median 1.09 times the true sizes after 60 steps from ImageNet.)

    The forward (eager, training and inference; not when traced, exported or compiled) runs the three
    3x3 convolutions as one convolution over their concatenated weights where that was measured
    faster: when the head's input is wider than its hidden width (``res_*``: 256 -> 3 x 64, 0.77x of
    the three convolutions' time on contiguous maps, 0.92x on channels_last ones, one thread at
    128 x 128; forward + backward in training 0.81-0.85x at batch 2-4), since the input is then read
    once instead of three times. With a narrow input and wide heads (``dla_34``: 64 -> 3 x 256) one
    768-channel output is slower than three (1.35x on channels_last, 1.4x in training: each
    256-channel map stays in cache for its ReLU and 1x1 convolution, the 768-channel one does not),
    so the three convolutions stay apart there. Autograd takes the gradients back through the
    concatenation to each head's own parameters. Traced graphs (``torch.export``, ONNX, int8) keep
    the three convolutions, whose weights are parameters the quantizer and exporters recognise.
    :meth:`fold_for_inference` (called by :func:`segzoo.optimize`) makes the fused convolution a real
    ``nn.Conv2d`` (``folded``) so that channels_last and weight prepacking apply to it, and moves the
    1x1 output convolutions onto oneDNN (:class:`~segzoo.layers.conv.OneDNNPointwiseConv2d`).
    """

    def __init__(self, in_channels: int, num_classes: int, head_conv: int = 64) -> None:
        super().__init__()

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_channels, head_conv, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(head_conv, out, 1))

        self.heatmap = head(num_classes)
        self.size = head(2)
        self.offset = head(2)
        nn.init.constant_(self.heatmap[2].bias, -2.19)
        for h in (self.size, self.offset):  # official msra_resnet: only the output conv; the 3x3 keeps its default
            nn.init.normal_(h[2].weight, std=0.001)
            nn.init.zeros_(h[2].bias)
        self.concat = in_channels > head_conv  # the measured rule above: one 3x3 convolution at inference
        self.folded: nn.Sequential | None = None  # fold_for_inference: the fused 3x3 convolution and its ReLU

    def _hidden_convs(self) -> list[nn.Conv2d] | None:
        """The three 3x3 convolutions when they can run as one (plain, same geometry, ReLU after)."""
        convs = [getattr(self, k)[0] for k in HEADS]
        first = convs[0]
        for k, conv in zip(HEADS, convs):
            seq = getattr(self, k)
            if (type(conv) is not nn.Conv2d or len(seq) != 3 or type(seq[1]) is not nn.ReLU or conv.bias is None
                    or conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
                    or (conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
                    != (first.in_channels, first.kernel_size, first.stride, first.padding, first.dilation)
                    or conv.weight.dtype != first.weight.dtype or conv.weight.device != first.weight.device):
                return None
        return convs

    def _outputs(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """The 1x1 output convolutions on the fused hidden map (the heads' slices of its channels)."""
        parts = hidden.split([getattr(self, k)[0].out_channels for k in HEADS], dim=1)
        return {k: getattr(self, k)[2](p) for k, p in zip(HEADS, parts)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.folded is not None and not self.training:
            return self._outputs(self.folded(x))
        if self.concat and not is_tracing():
            convs = self._hidden_convs()
            if convs is not None:
                c = convs[0]
                weight = torch.cat([conv.weight for conv in convs])
                bias = torch.cat([conv.bias for conv in convs])
                hidden = F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation)
                return self._outputs(F.relu(hidden, inplace=True))  # as the heads' ReLU(inplace=True)
        return {k: getattr(self, k)(x) for k in HEADS}

    @torch.no_grad()
    def fold_for_inference(self) -> bool:
        """For eval: the three 3x3 convolutions as one real ``nn.Conv2d`` (``folded``, where :attr:`concat`
        says it is faster) and the 1x1 output convolutions on oneDNN (float32 CPU weights). Exact to float
        rounding; training mode keeps the three heads as they are. Returns whether anything changed."""
        done = False
        convs = self._hidden_convs()
        if self.concat and convs is not None and self.folded is None:
            c = convs[0]
            conv = nn.Conv2d(c.in_channels, sum(m.out_channels for m in convs), c.kernel_size, c.stride, c.padding,
                             c.dilation, device=c.weight.device, dtype=c.weight.dtype)
            conv.weight.copy_(torch.cat([m.weight for m in convs]))
            conv.bias.copy_(torch.cat([m.bias for m in convs]))
            conv.requires_grad_(c.weight.requires_grad)
            self.folded = nn.Sequential(conv, nn.ReLU(inplace=True))
            done = True
        swapped = OneDNNPointwiseConv2d.swap_in(getattr(self, k)[2] for k in HEADS)  # the same state_dict keys
        return done or swapped > 0
