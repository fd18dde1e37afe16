"""int8 post-training quantization (PT2E with the x86 inductor quantizer).

``segzoo.quantize(model, calibration_images)`` exports the model's inference path with
``torch.export``, inserts observers where :class:`X86InductorQuantizer` says (convolutions and
linear layers with per-channel symmetric int8 weights, their inputs as uint8 activations, and
the pooling / add / concatenation around them), runs the calibration images through it, and
converts the observed ranges into quantize / dequantize pairs. Inductor (``torch.compile`` with
weight freezing) then lowers each pair and its convolution into one oneDNN int8 kernel; without
compiling, the graph runs the reference (slow) int8 arithmetic.

The PT2E API lives in ``torchao`` since torch 2.10 (``torchao.quantization.pt2e``); it is the
``int8`` extra: ``pip install 'segzoo[int8]'``. See docs/performance-optimize.md for the
accuracy cost measured on Shapes and on the nuclei tiles.

Detectors whose network ends in dense maps decoded outside it (CenterNet: ``forward_maps``, then
``postprocess``) quantize the same way up to the maps; the decoding (sigmoid, peak picking,
boxes) stays in float32 (:class:`QuantizedDetector`). Mask/Faster R-CNN are refused: their RPN
applies one convolution to every FPN level, which the x86 quantizer cannot annotate.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.export import dynamic_shapes, exportable
from segzoo.spec import TASK_TRAITS

__all__ = ["QuantizedDetector", "QuantizedModel", "quantize"]


def _pt2e():
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as e:
        raise ImportError("int8 quantization needs torchao (PT2E): pip install 'segzoo[int8]'") from e
    return prepare_pt2e, convert_pt2e, xiq


def _images(calibration_images: Any) -> list[torch.Tensor]:
    """Calibration images as a list of ``1 x 3 x H x W`` float tensors."""
    if isinstance(calibration_images, torch.Tensor):
        calibration_images = [calibration_images]
    if not isinstance(calibration_images, Iterable):
        raise TypeError("calibration_images must be a tensor, or a list or iterable of image tensors, got "
                        f"{type(calibration_images).__name__}")
    out = []
    for im in calibration_images:
        if isinstance(im, (tuple, list)) and im and isinstance(im[0], torch.Tensor):
            im = im[0]  # (image, target) pairs of a dataset
        if not isinstance(im, torch.Tensor) or im.dim() not in (3, 4) or im.shape[-3] != 3:
            shape = tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
            raise ValueError(f"calibration images must be 3 x H x W or N x 3 x H x W float tensors, got {shape}")
        if not im.is_floating_point():
            raise ValueError(f"calibration images must be float in [0, 1], got {im.dtype}; divide uint8 by 255")
        out += [im[None]] if im.dim() == 3 else list(im.split(1))
    if not out:
        raise ValueError("no calibration images: give a few dozen images like the ones the model will see")
    return out


def _freezing(compiled: bool) -> contextlib.AbstractContextManager:
    # weight freezing lets inductor pre-pack the int8 weights into oneDNN kernels (compile(options=...)
    # does not reach that pass in torch 2.14: the config is patched around the call that compiles)
    return torch._inductor.config.patch(freezing=True) if compiled else contextlib.nullcontext()


class _Quantized(nn.Module):
    """What the int8 models share: the float model's identity (task, classes, spec) and inference mode only."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.task = source.task
        self.num_classes = getattr(source, "num_classes", None)
        self.classes = getattr(source, "classes", None)
        self.spec = getattr(source, "spec", None)
        self.training = False  # inference only, from the start (evaluate() restores the mode it found)

    def train(self, mode: bool = True) -> _Quantized:
        if mode:
            raise RuntimeError("an int8 model is for inference only; train the float model and quantize it again")
        self.training = False  # an exported graph has no train/eval switch: its modes were fixed at export
        return self


class QuantizedModel(_Quantized):
    """The int8 model of a semantic model: ``forward(images)`` returns logits ``N x C x H x W``.

    Attributes:
        graph_module: the converted PT2E graph (``torch.export.export`` it, or use :meth:`export`).
        task, num_classes, classes, spec: copied from the float model.
        dynamic: whether the batch and image size are free (``dynamic=True``); otherwise every
            input must have the calibration images' size.
    """

    def __init__(self, graph_module: nn.Module, source: nn.Module, example: torch.Tensor, dynamic: bool,
                 compile: bool):
        super().__init__(source)
        self.graph_module = graph_module
        self.dynamic = dynamic
        self.example_shape = tuple(example.shape)
        self.compiled = compile
        runner = torch.compile(graph_module, dynamic=dynamic) if compile else graph_module
        object.__setattr__(self, "_runner", runner)

    def forward(self, images: torch.Tensor) -> Any:
        if not self.dynamic and tuple(images.shape) != self.example_shape:
            raise ValueError(f"this int8 model was quantized for inputs of shape {self.example_shape}, got "
                             f"{tuple(images.shape)}; resize the input, or quantize with dynamic=True")
        with torch.no_grad(), _freezing(self.compiled):
            return self._runner(images)

    def export(self, example: torch.Tensor | None = None) -> torch.export.ExportedProgram:
        """``torch.export`` of the int8 graph (save it with ``torch.export.save``)."""
        example = torch.rand(self.example_shape) if example is None else example
        shapes = dynamic_shapes(self, example)[0] if self.dynamic else None
        with torch.no_grad():
            return torch.export.export(self.graph_module, (example,), dynamic_shapes=shapes)


class _Maps(nn.Module):
    """A detector's network without its decoding: normalised padded images -> its raw maps, as a tuple."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.model.forward_maps(x)
        return tuple(maps[k] for k in self.keys)


class _DetectorExport(nn.Module):
    """``images -> boxes, scores, labels, num_detections`` with the int8 maps graph inside."""

    def __init__(self, quantized: QuantizedDetector) -> None:
        super().__init__()
        self.graph_module, self.source = quantized.graph_module, quantized.source
        self.keys, self.max_detections = quantized.keys, quantized.source.max_detections

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, sizes = self.source.preprocess(images)
        maps = dict(zip(self.keys, self.graph_module(x)))
        return self.source.decode_padded(maps, sizes, self.max_detections)


class QuantizedDetector(_Quantized):
    """The int8 model of a dense-map detector (CenterNet): ``forward(images)`` returns one
    ``{"boxes", "scores", "labels"}`` dict per image, like the float model in eval mode.

    The images are normalised and padded in float32 (the float model's ``preprocess``), then
    zero-padded further to the graph's size (the largest calibration image, padded), as a float
    batch pads its smaller images; the network up to its maps runs in int8 one image at a time
    (a batch of one), and the maps are decoded in float32 (``postprocess``, boxes clipped to each
    image). Larger images are refused.

    Attributes:
        graph_module: the converted PT2E graph of the maps network.
        source: the float model (its weights are not used; it normalises and decodes).
        task, num_classes, classes, spec: copied from the float model.
    """

    dynamic = False

    def __init__(self, graph_module: nn.Module, source: nn.Module, example: torch.Tensor, keys: tuple[str, ...],
                 compile: bool):
        super().__init__(source)
        self.graph_module, self.source, self.keys = graph_module, source, keys
        self.example_shape = tuple(example.shape)
        self.compiled = compile
        object.__setattr__(self, "_runner", torch.compile(graph_module) if compile else graph_module)

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with torch.no_grad():
            x, sizes = self.source.preprocess(images)
            x = _pad_to(x, self.example_shape[-2:])
            with _freezing(self.compiled):
                outs = [self._runner(xi) for xi in x.split(1)]
            maps = {k: torch.cat([o[i] for o in outs]) for i, k in enumerate(self.keys)}
            return self.source.postprocess(maps, sizes)

    def export(self, example: torch.Tensor | None = None) -> torch.export.ExportedProgram:
        """``torch.export`` of ``images (1 x 3 x H x W) -> boxes, scores, labels, num_detections`` (padded
        to ``max_detections``, as :func:`segzoo.export.exportable` gives for the float model)."""
        example = torch.rand(1, 3, *self.example_shape[-2:]) if example is None else example
        with torch.no_grad():
            return torch.export.export(_DetectorExport(self), (example,))  # no .eval(): the graph refuses it


def _pad_to(x: torch.Tensor, canvas) -> torch.Tensor:
    """Normalised images zero-padded at the bottom and right to ``canvas`` (the int8 graph's size)."""
    h, w = canvas
    if x.shape[-2] > h or x.shape[-1] > w:
        raise ValueError(f"this int8 model runs on images padded to {h} x {w}, got {tuple(x.shape[-2:])} after "
                         "padding; resize the input, or quantize with calibration images as large as it")
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def _calibrated(graph: nn.Module, inputs: list[torch.Tensor], pt2e, keep_float: Sequence[str] = ()) -> nn.Module:
    """The exported ``graph`` annotated by the x86 inductor quantizer (but the modules named in ``keep_float``,
    as the exported graph names them), observed on ``inputs`` and converted."""
    prepare_pt2e, convert_pt2e, xiq = pt2e
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    for name in keep_float:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in inputs:
            prepared(x)
    return convert_pt2e(prepared)


def _quantize_maps(model: nn.Module, images: list[torch.Tensor], compile: bool, pt2e, canvas=None,
                   keep_float: Sequence[str] = ()) -> QuantizedDetector:
    source = copy.deepcopy(model).eval()
    with torch.no_grad():
        padded = [source.preprocess(im)[0] for im in images]
        largest = (max(x.shape[-2] for x in padded), max(x.shape[-1] for x in padded))
        d = source.size_divisibility
        canvas = largest if canvas is None else tuple(max(int(c) + (-int(c)) % d, m) for c, m in zip(canvas, largest))
        padded = [_pad_to(x, canvas) for x in padded]  # smaller images pad further, as in a float batch
        keys = tuple(source.forward_maps(padded[0]).keys())
        graph = torch.export.export(_Maps(source, keys), (padded[0],)).module()
    graph_module = _calibrated(graph, padded, pt2e, [f"model.{n}" for n in keep_float])
    return QuantizedDetector(graph_module, source, padded[0], keys, compile)


def quantize(model: nn.Module, calibration_images: Any, *, dynamic: bool = False, compile: bool = True,
             canvas: tuple[int, int] | None = None, keep_float: Sequence[str] = ()
             ) -> QuantizedModel | QuantizedDetector:
    """int8 copy of a semantic ``model`` (or of a dense-map detector: CenterNet) by PT2E post-training
    quantization (x86 inductor quantizer, CPU).

    Args:
        model: a segzoo model (left unchanged: a copy is exported).
        calibration_images: tensors ``3 x H x W`` or ``N x 3 x H x W`` (float in [0, 1]), a list
            of them or a dataset of ``(image, target)``: 20-100 images like those the model will
            see. Without ``dynamic`` they must all have one size, the size the int8 model runs at.
        dynamic: leave batch, height and width free (one graph for every size).
        compile: compile with inductor (weight freezing) on the first call, which gives the int8
            speed; False keeps the reference graph (for export or debugging).
        canvas: detectors: the ``(height, width)`` the int8 graph runs at, the largest image it will
            take (default: the largest calibration image); rounded up to the model's padding multiple.
        keep_float: names of submodules (as in ``model.named_modules()``, e.g. ``"head"``) left in
            float32: the layers whose rounding costs the most accuracy.

    Returns:
        A :class:`QuantizedModel` (semantic models) or :class:`QuantizedDetector` (CenterNet: the
        network in int8 up to its maps, the decoding in float32; fixed-size).
    """
    pt2e = _pt2e()
    images = _images(calibration_images)
    traits = TASK_TRAITS.get(getattr(model, "task", None))
    dense = traits is not None and traits.dense
    if not dense and not (hasattr(model, "forward_maps") and hasattr(model, "postprocess")):
        # Mask/Faster R-CNN call one RPN convolution on every FPN level (the quantizer refuses a convolution
        # with several outputs)
        raise NotImplementedError(f"int8 quantization supports semantic models and CenterNet; {type(model).__name__} "
                                  f"is a {getattr(model, 'task', 'non-segzoo')} model: use segzoo.optimize for it")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 PT2E quantization with the x86 inductor quantizer runs on the CPU; the model is on "
                         f"{device}: move it with model.cpu()")
    if not dense:
        if dynamic:
            raise ValueError("a detector's int8 model is fixed-size (its decoding is exported at one size): "
                             "quantize with dynamic=False and calibration images of the deployed size")
        return _quantize_maps(model, images, compile, pt2e, canvas, keep_float)
    if canvas is not None:
        raise ValueError("canvas= sets a detector's int8 size; a semantic int8 model runs at its calibration images' "
                         "size, or at any size with dynamic=True")
    sizes = {tuple(im.shape[-2:]) for im in images}
    if not dynamic and len(sizes) > 1:
        raise ValueError(f"calibration images have {len(sizes)} sizes ({sorted(sizes)[:3]}...); resize them to the "
                         "one size the int8 model will run at, or use dynamic=True")
    example = images[0]
    float_model = copy.deepcopy(model).eval()  # prepare_pt2e folds BatchNorm into the convolutions itself
    module = exportable(float_model)
    shapes = None
    if dynamic:
        shapes, example = dynamic_shapes(float_model, example)
    with torch.no_grad():
        graph = torch.export.export(module, (example,), dynamic_shapes=shapes).module()
    return QuantizedModel(_calibrated(graph, images, pt2e, keep_float), model, images[0], dynamic, compile)
