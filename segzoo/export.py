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

OUTPUT_NAMES = {
    "semantic": ("logits",),
    "detection": ("boxes", "scores", "labels", "num_detections"),
    "instance": ("boxes", "scores", "labels", "masks", "num_detections"),
    "panoptic": ("segments", "segment_labels", "segment_scores", "segment_areas", "num_segments"),
}


def exportable(model: nn.Module, max_detections: int = 100) -> nn.Module:
    """The module that is exported for ``model`` (itself for semantic models), in eval mode."""
    if model.task == "semantic":
        return model.eval()
    if not hasattr(model, "exportable"):
        raise NotImplementedError(
            f"{type(model).__name__} has no exportable() inference path; detection models must "
            "provide one that returns padded outputs"
        )
    return model.exportable(max_detections=max_detections).eval()


def example_input(height: int = 128, width: int = 128, batch: int = 1, device: Any = "cpu") -> torch.Tensor:
    return torch.rand(batch, 3, height, width, device=device)


def export_program(model: nn.Module, example: torch.Tensor | None = None, max_detections: int = 100,
                   dynamic: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the model's inference path.

    Args:
        model: a segzoo model.
        example: an ``N x 3 x H x W`` input (128 x 128 by default).
        max_detections: K for detection models (see the module docstring).
        dynamic: mark height and width as dynamic (semantic models).
    """
    module = exportable(model, max_detections)
    example = example if example is not None else example_input()
    shapes = None
    if dynamic:
        h = torch.export.Dim("height", min=32, max=4096)
        w = torch.export.Dim("width", min=32, max=4096)
        shapes = {"images": {2: h, 3: w}} if model.task == "semantic" else None
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=shapes)


def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor | None = None,
                max_detections: int = 100, opset: int = 18, dynamo: bool = True) -> str:
    """Write the model's inference path as an ONNX file.

    Returns:
        The path written. Input name ``images``; outputs named as in ``OUTPUT_NAMES``.
    """
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export needs the export extra: pip install 'segzoo[export]'") from e
    module = exportable(model, max_detections)
    example = example if example is not None else example_input()
    names = list(OUTPUT_NAMES[model.task])
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=names,
                          opset_version=opset, dynamo=dynamo, verbose=False)
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
