"""ONNX and ``torch.export`` for segzoo models.

Semantic models export as they are: ``N x 3 x H x W`` images in [0, 1] in, logits out
(normalisation is inside the graph).

Detection and instance models export their inference path through
``model.exportable(max_detections)``, a module whose forward takes an ``N x 3 x H x W``
batch and returns fixed-size, padded tensors::

    boxes  (N, K, 4) float   xyxy in input pixels
    scores (N, K)    float   0 for padding
    labels (N, K)    int64   0-based; -1 for padding
    masks  (N, K, H, W)      instance models only; probabilities
    num_detections (N,) int64  how many of the K rows are real

with ``K = max_detections``. Eager ``model(images)`` gives the same first
``num_detections`` rows.

Panoptic models export their merged output, with ``M = max_detections + num_stuff`` rows::

    segments       (N, H, W) int32   segment ids, 0 void
    segment_labels (N, M)    int64   row r: category of segment id r + 1 (things first); -1 unused
    segment_scores (N, M)    float   instance score, or the mean class probability of a stuff segment
    segment_areas  (N, M)    int64   pixels
    num_segments   (N,)      int64   rows in use

the same segments as eager ``model(images)`` when at most ``max_detections`` instances per
image pass ``combine_score_thresh``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from segzoo.spec import task_traits

OUTPUT_NAMES = {
    "semantic": ("logits",),
    "detection": ("boxes", "scores", "labels", "num_detections"),
    "instance": ("boxes", "scores", "labels", "masks", "num_detections"),
    "panoptic": ("segments", "segment_labels", "segment_scores", "segment_areas", "num_segments"),
    # set-prediction models (Mask2Former, EoMT; ``export_kind = "set"``): the final prediction before the merges
    "set": ("class_logits", "mask_logits"),
}


def _kind(model: nn.Module) -> str:
    """The key of ``OUTPUT_NAMES`` for ``model``: its ``export_kind`` if it has one, else its task."""
    return getattr(model, "export_kind", None) or model.task


def exportable(model: nn.Module, max_detections: int = 100) -> nn.Module:
    """The module that is exported for ``model`` (itself for semantic models), in eval mode."""
    if task_traits(model.task).dense:
        return model.eval()
    if not hasattr(model, "exportable"):
        raise NotImplementedError(
            f"{type(model).__name__} has no exportable() inference path; detection models must "
            "provide one that returns padded outputs"
        )
    return model.exportable(max_detections=max_detections).eval()


def example_input(height: int = 128, width: int = 128, batch: int = 1, device: Any = "cpu") -> torch.Tensor:
    return torch.rand(batch, 3, height, width, device=device)


def dynamic_shapes(model: nn.Module, example: torch.Tensor, min_size: int = 64,
                   max_size: int = 4096) -> tuple[dict[str, Any], torch.Tensor]:
    """``torch.export`` dynamic shapes with batch, height and width free, and the example to trace.

    Semantic models and those whose ``dynamic_export`` is True (Mask2Former, EoMT); a detection
    export is fixed-size: export it at the deployed size.
    Returns the ``dynamic_shapes`` mapping and the example, repeated to a batch of 2 when it
    has 1 (``torch.export`` specialises sizes of 1). The exported graph then takes any batch
    of 1 to 1024 and any height and width in ``[min_size, max_size]``; ``min_size`` is 64
    because models with a stride-32 stage specialise a 1-pixel deepest feature map.
    """
    task = model.task
    if not task_traits(task).dynamic_export and not getattr(model, "dynamic_export", False):
        raise ValueError(f"dynamic export supports semantic models; {type(model).__name__} is a {task} model, "
                         "whose export is fixed-size: export it at the input size you deploy (dynamic=False)")
    if example.dim() != 4:
        raise ValueError(f"the example must be N x 3 x H x W, got shape {tuple(example.shape)}")
    if not min_size <= min(example.shape[-2:]) <= max(example.shape[-2:]) <= max_size:
        raise ValueError(f"the example's size {tuple(example.shape[-2:])} must be within [{min_size}, {max_size}] "
                         "for a dynamic export; use an example of e.g. 128 x 128")
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=min_size, max=max_size)
    width = torch.export.Dim("width", min=min_size, max=max_size)
    if example.shape[0] == 1:
        example = example.expand(2, -1, -1, -1).contiguous()
    return {"images": {0: batch, 2: height, 3: width}}, example


def export_program(model: nn.Module, example: torch.Tensor | None = None, max_detections: int = 100,
                   dynamic: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the model's inference path.

    Args:
        model: a segzoo model.
        example: an ``N x 3 x H x W`` input (128 x 128 by default).
        max_detections: K for detection models (see the module docstring).
        dynamic: leave batch, height and width free (semantic models; see :func:`dynamic_shapes`),
            so that one program runs at any input size. Otherwise the example's shape is fixed.
    """
    module = exportable(model, max_detections)
    example = example if example is not None else example_input()
    shapes = None
    if dynamic:
        shapes, example = dynamic_shapes(model, example)
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=shapes)


def export_onnx(model: nn.Module | torch.export.ExportedProgram, path: str | os.PathLike,
                example: torch.Tensor | None = None, max_detections: int = 100, opset: int = 18,
                dynamo: bool = True, dynamic: bool = False) -> str:
    """Write the model's inference path as an ONNX file.

    ``model`` may also be a program from :func:`export_program`, which is then translated as it
    is (its shapes, dynamic or not, are kept; ``example``, ``max_detections`` and ``dynamic`` do
    not apply): export once, write both the ``.pt2`` and the ``.onnx``.

    ``dynamic=True`` leaves batch, height and width free (semantic models; see
    :func:`dynamic_shapes`): one file runs at any input size. It needs the dynamo exporter.

    Returns:
        The path written. Input name ``images``; outputs named as in ``OUTPUT_NAMES``.
    """
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export needs the export extra: pip install 'segzoo[export]'") from e
    if isinstance(model, torch.export.ExportedProgram):
        count = len(model.graph_signature.user_outputs)
        names = next((list(v) for v in OUTPUT_NAMES.values() if len(v) == count), None)
        torch.onnx.export(model, (), str(path), input_names=["images"], output_names=names,
                          opset_version=opset, dynamo=True, verbose=False)
        return str(path)
    module = exportable(model, max_detections)
    example = example if example is not None else example_input()
    names = list(OUTPUT_NAMES[_kind(model)])
    shapes = None
    if dynamic:
        if not dynamo:
            raise ValueError("dynamic=True needs the dynamo ONNX exporter (dynamo=True)")
        shapes, example = dynamic_shapes(model, example)
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=names,
                          opset_version=opset, dynamo=dynamo, dynamic_shapes=shapes, verbose=False)
    return str(path)


def run_onnx(path: str | os.PathLike, example: torch.Tensor) -> list[torch.Tensor]:
    """Run an exported ONNX file with onnxruntime on CPU; outputs as tensors."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("running ONNX needs the export extra: pip install 'segzoo[export]'") from e
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: example.cpu().numpy()})
    return [torch.from_numpy(o) for o in outs]


def eager_outputs(model: nn.Module, example: torch.Tensor, max_detections: int = 100) -> list[torch.Tensor]:
    """What the exported graph must reproduce, computed eagerly."""
    module = exportable(model, max_detections)
    with torch.no_grad():
        out = module(example)
    return list(out) if isinstance(out, (tuple, list)) else [out]
