"""The two spreads of ``UpsampledConcatConv`` on the heads' own shapes, in CPU time, alternating in one process.

    python -m benchmarks.speed.spread 256 7     # input side, rounds

For each head that folds a convolution over upsampled maps (PSPNet-R50's and UPerNet-ConvNeXt-T's
pyramid-pooling bottlenecks, UPerNet's fuse layer, SegFormer-B0's fuse layer), the module is built on
random weights once per spread, every small map spread by interpolation matrices (``"matrix"``),
resized (``"resize"``) or by size (``"auto"``), in the layout ``segzoo.optimize`` runs that model in
(channels_last for UPerNet), and all are timed on the head's input shapes for an image of ``side``
pixels. One thread; each time is the median of ``rounds`` calls in ``time.process_time``. SegFormer's
case runs on the maps of an optimized ``segformer_b0`` body (random weights): synthetic channels_last
maps of the same shapes resize faster than the body's own (NHWC views of its tokens, with another
batch stride). The heads use the faster spread per case (docs/performance-optimize.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import segzoo
from segzoo.layers.upsampled_conv import SPREADS, UpsampledConcatConv

# name: (kernel, output channels, x_0 (channels, stride), small maps (channels, stride or fixed b x b grid),
# channels_last inputs, channels_last module (segzoo.optimize's CHANNELS_LAST for the model), the head's spread)
CASES = {
    "pspnet_resnet50 bottleneck": (3, 512, (2048, 8), [(512, "1"), (512, "2"), (512, "3"), (512, "6")], False,
                                   False, "matrix"),
    "upernet_convnext_tiny bottleneck": (3, 512, (768, 32), [(512, "1"), (512, "2"), (512, "3"), (512, "6")], True,
                                         True, "matrix"),
    "upernet_convnext_tiny fuse": (3, 512, (512, 4), [(512, 8), (512, 16), (512, 32)], True, True,
                                   "resize"),
    # MiT's maps are NHWC-strided views (channels_last strides); the model runs contiguous
    "segformer_b0 fuse": (1, 256, (32, 4), [(64, 8), (160, 16), (256, 32)], True, False, "auto"),
}


def _map(channels: int, where: int | str, side: int, layout: torch.memory_format) -> torch.Tensor:
    cells = int(where) if isinstance(where, str) else side // where
    return torch.randn(1, channels, cells, cells).contiguous(memory_format=layout)


def _segformer_maps(side: int) -> list[torch.Tensor]:
    """The four maps of an optimized ``segformer_b0`` body (random weights) for a ``side`` px image."""
    model = segzoo.optimize(segzoo.build("segformer_b0", num_classes=150).eval())
    with torch.inference_mode():
        return list(model.model.backbone(torch.rand(1, 3, side, side)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("size", type=int, help="input side")
    parser.add_argument("rounds", type=int, help="timed calls per spread")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for name, (k, out, (c0, s0), smalls, channels_last, module_cl, used) in CASES.items():
        layout = torch.channels_last if channels_last else torch.contiguous_format
        module_layout = torch.channels_last if module_cl else torch.contiguous_format
        channels = [c0] + [c for c, _ in smalls]
        weight, bias = torch.randn(out, sum(channels), k, k) * 0.01, torch.randn(out)
        x0 = _map(c0, s0, args.size, layout)
        xs = [_map(c, where, args.size, layout) for c, where in smalls]
        if name.startswith("segformer"):  # the body's own maps: their strides decide the resize's speed
            x0, *xs = _segformer_maps(args.size)
        modules = {s: UpsampledConcatConv(weight, bias, channels, spread=[s] * len(smalls))
                   for s in SPREADS}
        modules = {s: m.to(memory_format=module_layout) for s, m in modules.items()}
        times = {s: [] for s in SPREADS}
        with torch.inference_mode():
            for m in modules.values():
                m(x0, xs)
            for _ in range(args.rounds):
                for s, m in modules.items():
                    start = time.process_time()
                    m(x0, xs)
                    times[s].append((time.process_time() - start) * 1e3)
        med = {s: statistics.median(t) for s, t in times.items()}
        print(f"{name:34s} {args.size} px  " + "  ".join(f"{s} {t:7.1f} ms" for s, t in med.items())
              + f"  matrix/resize {med['matrix'] / med['resize']:.2f}  (the head uses {used})", flush=True)


if __name__ == "__main__":
    main()
