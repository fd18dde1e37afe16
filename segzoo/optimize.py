"""An inference copy of a model: BatchNorm folded, channels_last, inference mode, optional compile and bf16.

``segzoo.optimize(model)`` returns an :class:`OptimizedModel` that computes the same outputs as
``model`` in eval mode (within float rounding) faster on the CPU. The exact parts are on by default:

- **fold BN**: every ``Conv2d -> BatchNorm`` pair whose convolution feeds only that norm layer
  becomes one convolution (:func:`segzoo.fuse.fuse`); fewer passes over memory.
- **channels_last**: weights (and 4-d inputs) in NHWC memory order, which oneDNN's CPU convolutions
  run without reordering. Chosen per family and device from measurements (:data:`CHANNELS_LAST`),
  because the non-convolution ops of some families (RoIAlign, ``grid_sample``) lose in NHWC what
  the convolutions gain.
- **prepacked convolutions**: for the families measured faster with it, every plain float32
  convolution keeps its weight in oneDNN's blocked layout (:mod:`segzoo.prepack`), so it is not
  reordered on every call; the same kernel on the same numbers. Chosen per family from
  measurements (:data:`PREPACK`); likewise every plain float32 linear layer through oneDNN's packed
  matrix product (:data:`PREPACK_LINEAR`).
- **exact rewrites**: a module that knows a cheaper way to compute the same numbers in eval mode
  defines ``fold_for_inference(self) -> bool`` (for example a convolution over an upsampled map
  computed on the small map, since both are linear); :func:`optimize` calls it on every module
  after folding BatchNorm and counts the ones that applied. Each is exact to float rounding and
  tested against the module's own eval forward.
- **inference mode**: the forward runs under ``torch.inference_mode()`` (no autograd records,
  no version counters) and parameters stop requiring gradients.

Opt-in, because they change the numbers or cost time up front:

- ``bf16=True``: ``torch.autocast`` in bfloat16; outputs are cast back to float32. Argmax and
  scores move slightly (see docs/performance-optimize.md for the measured cost).
- ``compile=True``: ``torch.compile`` (inductor); the first call of each input shape compiles.

The caller's model is never modified (``inplace=False``, the default, works on a deep copy): a
model being trained keeps its BatchNorm layers, its memory format and its gradients.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from segzoo import prepack as packing
from segzoo.fuse import fuse as fold_batchnorm

__all__ = ["CHANNELS_LAST", "PREPACK", "PREPACK_LINEAR", "OptimizedModel", "optimize", "rewrite_for_inference",
           "uses_channels_last", "uses_prepack", "uses_prepack_linear"]

# Whether channels_last is faster, per model class and device type, from python -m benchmarks.speed --optimize
# (one thread, see docs/performance-optimize.md); a class not listed uses the "*" entry of its device.
# Devices not listed have not been measured and keep the contiguous layout.
CHANNELS_LAST: dict[str, dict[str, bool]] = {
    "cpu": {
        "*": True,
        # the dilated-ResNet families run fastest contiguous with prepacked convolutions (PREPACK)
        "FCN": False, "PSPNet": False, "DeepLabV3": False, "DeepLabV3Plus": False,
        "SegFormer": False,  # MiT's token maps are NHWC-strided already; NHWC logits cost a transposition
    },
}

# Whether prepacked oneDNN convolutions (segzoo.prepack) are faster, per model class and device type, from the
# same benchmark (docs/performance-optimize.md): a clear gain on the dilated ResNet bodies (0.70-0.82x of the fused
# model's time at 256 px), a loss where channels_last already gave oneDNN its layout (U-Net, HRNet, SegFormer,
# the R-CNNs, CenterNet, UPerNet: 1.05-1.25x), so it is off there. Only the CPU has prepacked convolutions.
PREPACK: dict[str, dict[str, bool]] = {
    "cpu": {
        "*": False,
        "FCN": True, "PSPNet": True, "DeepLabV3": True, "DeepLabV3Plus": True,
        "FasterRCNN": True, "MaskRCNN": False,  # Faster R-CNN-R50 at 256 px: 0.74 of the anchor against 0.84 without
    },
}


# Whether prepacked oneDNN linear layers (segzoo.prepack.PrepackedLinear) are faster, per model class and device
# type, from the same benchmark (docs/performance-optimize.md, "Transformer families"): this machine's default
# matrix product runs at half oneDNN's speed. Families without linear layers are unaffected either way.
PREPACK_LINEAR: dict[str, dict[str, bool]] = {
    "cpu": {
        "*": False,
        "UPerNet": True,  # ConvNeXt's MLPs: 0.90x of the model's time (SegFormer: slower, MiT's are narrow)
        "Mask2Former": True,  # the pixel decoder's and transformer decoder's linear layers: 0.94x
        "EoMT": True,  # the ViT's: 0.76x
    },
}


def _measured(tables: dict[str, dict[str, bool]], model: nn.Module, device: torch.device | str) -> bool:
    table = tables.get(torch.device(device).type)
    if not table:
        return False
    inner = getattr(model, "model", None)  # an export wrapper (SetPredictionExport): its model's family
    for m in [model] + ([inner] if isinstance(inner, nn.Module) else []):
        for cls in type(m).__mro__[:-2]:  # the most specific class listed wins (not nn.Module, object)
            if cls.__name__ in table:
                return table[cls.__name__]
    return table.get("*", False)


def uses_channels_last(model: nn.Module, device: torch.device | str) -> bool:
    """The measured choice of :data:`CHANNELS_LAST` for ``model``'s class on ``device``."""
    return _measured(CHANNELS_LAST, model, device)


def uses_prepack(model: nn.Module, device: torch.device | str) -> bool:
    """The measured choice of :data:`PREPACK` for ``model``'s class on ``device`` (and oneDNN present)."""
    return _measured(PREPACK, model, device) and packing.available()


def uses_prepack_linear(model: nn.Module, device: torch.device | str) -> bool:
    """The measured choice of :data:`PREPACK_LINEAR` for ``model``'s class on ``device`` (and oneDNN present)."""
    return _measured(PREPACK_LINEAR, model, device) and packing.available()


@dataclasses.dataclass(frozen=True)
class Choices:
    """What :func:`optimize` applied."""

    fused: int  # conv-norm pairs folded
    channels_last: bool
    bf16: bool
    compiled: bool
    prepacked: int = 0  # convolutions and linear layers with oneDNN-packed weights
    rewritten: int = 0  # modules whose fold_for_inference applied

    def describe(self) -> str:
        parts = [f"{self.fused} conv-bn folded"] + ["channels_last"] * self.channels_last
        parts += [f"{self.prepacked} layers prepacked"] * bool(self.prepacked)
        parts += [f"{self.rewritten} modules rewritten"] * bool(self.rewritten)
        return ", ".join(parts + ["inference mode"] + ["bf16 autocast"] * self.bf16 + ["compiled"] * self.compiled)


def _channels_last_input(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _float32(obj: Any) -> Any:
    """Floating tensors back to float32 and a contiguous layout, through lists, tuples and dicts."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.dtype != torch.float32:
            obj = obj.float()
        return obj.contiguous()
    if isinstance(obj, dict):
        return {k: _float32(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_float32(v) for v in obj)
    return obj


class OptimizedModel(nn.Module):
    """An inference-only wrapper around an optimised copy of a segzoo model.

    ``optimized(images)`` returns what ``model(images)`` returns in eval mode. Attributes that
    the wrapper does not have (``task``, ``spec``, ``num_classes``, ``classes``, ``exportable``,
    ...) are read from the wrapped model, so :func:`segzoo.predict`, ``segzoo.engine.evaluate``
    and :func:`segzoo.export.export_program` take it as they take the model. It computes no
    losses: train and save the original model.
    """

    def __init__(self, model: nn.Module, choices: Choices, runner: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.choices = choices
        object.__setattr__(self, "_runner", runner if runner is not None else model)  # not a second submodule

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("model")  # absent while being copied or unpickled
            if inner is None:
                raise
            return getattr(inner, name)

    def train(self, mode: bool = True) -> OptimizedModel:
        if mode:
            raise RuntimeError("an optimized model is for inference only (its BatchNorm is folded); train the "
                               "original model, and call segzoo.optimize again afterwards")
        return super().train(False)

    def forward(self, images: Any, targets: Any = None) -> Any:
        if targets is not None:
            raise ValueError("an optimized model computes predictions only; compute losses with the original model")
        if self.choices.channels_last:
            images = _channels_last_input(images)
        with torch.inference_mode():
            if self.choices.bf16:
                device = images[0].device if isinstance(images, (list, tuple)) else images.device
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return _float32(self._runner(images))
            out = self._runner(images)
            return _float32(out) if self.choices.channels_last else out


def rewrite_for_inference(model: nn.Module) -> int:
    """Call ``fold_for_inference()`` on every module of ``model`` that defines it; how many applied."""
    done = 0
    for module in list(model.modules()):
        fold = getattr(module, "fold_for_inference", None)
        if callable(fold) and fold():
            done += 1
    return done


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def optimize(
    model: nn.Module,
    example: Any = None,
    *,
    fuse: bool = True,
    channels_last: bool | str = "auto",
    bf16: bool = False,
    compile: bool | str = False,
    prepack: bool | str = "auto",
    inplace: bool = False,
) -> OptimizedModel:
    """An inference copy of ``model``: the same outputs, computed faster.

    Args:
        model: a segzoo model (or any module whose eval forward takes ``example``).
        example: an input to trace which convolution feeds which BatchNorm (an ``N x 3 x H x W``
            batch, or a list of ``3 x H x W`` images for detection models); a ``1 x 3 x 64 x 64``
            batch on the model's device by default.
        fuse: fold BatchNorm into the preceding convolutions and apply the modules' exact
            rewrites (``fold_for_inference``; both exact to float rounding).
        channels_last: ``"auto"``: the measured choice for the model's family and device
            (:func:`uses_channels_last`); True / False to force it.
        bf16: run under bfloat16 autocast (outputs float32). Not exact; opt-in.
        compile: ``torch.compile`` the copy (True: inductor; or a backend name). Compiles on the
            first call of each input shape.
        prepack: ``"auto"``: the measured choice for the family (:func:`uses_prepack`) when neither
            ``bf16`` nor ``compile`` is asked for; True / False to force it (True needs float32 on the
            CPU, without ``bf16`` or ``compile``, which handle the weights themselves).
        inplace: optimise ``model`` itself instead of a deep copy (saves the memory of a second
            copy; the model is then unfit for training: its BatchNorm layers are gone).

    Returns:
        An :class:`OptimizedModel` in eval mode; ``.choices`` says what was applied.
    """
    if isinstance(model, OptimizedModel):
        raise TypeError("this model is optimized already; pass the original model to segzoo.optimize")
    if channels_last not in ("auto", True, False):
        raise ValueError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
    if prepack not in ("auto", True, False):
        raise ValueError(f"prepack must be 'auto', True or False, got {prepack!r}")
    device = _device(model)
    if prepack is True and (bf16 or compile or device.type != "cpu" or not packing.available()):
        raise ValueError("prepack=True needs a float32 model on a CPU with oneDNN and neither bf16 nor compile "
                         f"(got device {device}, bf16={bf16}, compile={compile}); leave prepack='auto'")
    if fuse:
        model = fold_batchnorm(model, example, inplace=inplace)  # a copy unless inplace
        fused = len(model.fused_pairs)
    else:
        model = model if inplace else copy.deepcopy(model)
        fused = 0
    model.eval()
    model.requires_grad_(False)
    rewritten = rewrite_for_inference(model) if fuse else 0
    last = uses_channels_last(model, device) if channels_last == "auto" else bool(channels_last)
    if last:
        model = model.to(memory_format=torch.channels_last)
    auto = prepack == "auto" and not bf16 and not compile
    pack = uses_prepack(model, device) and auto if prepack == "auto" else bool(prepack)
    pack_linear = uses_prepack_linear(model, device) and auto if prepack == "auto" else bool(prepack)
    prepacked = packing.prepack(model, convs=pack, linears=pack_linear) if pack or pack_linear else 0
    runner = None
    if compile:
        runner = torch.compile(model, backend="inductor" if compile is True else compile)
    return OptimizedModel(model, Choices(fused, last, bool(bf16), bool(compile), prepacked, rewritten), runner).eval()
