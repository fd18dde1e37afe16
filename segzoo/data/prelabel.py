"""Pre-labels: a model's predictions written as annotations the labelling tools import (``segzoo infer --to``).

:class:`Predictions` holds the predictions of a set of images as a segzoo dataset (the
:class:`~segzoo.data.records.AnnotatedImages` interface the format readers share), so the
writers of ``segzoo data convert`` write them (:func:`write_prelabels`) and segzoo's readers read
them back: what a labelling tool imports is what segzoo would train on.

- Instance models: one object per detection scoring at least the threshold, its mask
  (probability >= 0.5) traced into polygons (several parts: one object of several polygons; with
  holes: the format's mask), its score kept where the format allows it (COCO ``score``, LabelMe
  ``score``/``description``, CVAT ``score`` attribute; YOLO and mask folders have no place for it).
- Detection models: one box per detection.
- Semantic models: one object per predicted class (its pixels; the class named background, if
  label 0 is one, is left out) for the object formats; the label map itself for ``mask_folder``.

Class names come from the checkpoint (``model.classes``; ``class_<k>`` where it has none).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.data.contours import mask_to_polygons
from segzoo.data.convert import TARGETS, ConvertReport, write_folder
from segzoo.data.records import BACKGROUND_NAMES, AnnotatedImages, Obj, image_size, voc_colormap
from segzoo.data.targets import CLASS_MAP, Target
from segzoo.slicing import CropMasks

PathLike = str | os.PathLike
SPLIT = "train"  # the one split of pre-labels (YOLO data.yaml knows train/val/test only)


def _numpy(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def shape_object(label: int, mask: np.ndarray, score: float | None = None, origin: tuple[int, int] = (0, 0),
                 size: tuple[int, int] | None = None) -> Obj:
    """An object of the pixels of ``mask``: polygons traced along the pixel edges (they rasterise back to
    the same pixels), or the mask itself where it has holes, which polygons cannot hold.

    ``mask`` may be a crop whose top-left pixel is ``origin`` ``(y, x)`` of a ``size`` image (sliced
    inference's :class:`~segzoo.slicing.CropMasks`): polygons are shifted, a mask pasted at full size."""
    outers, holes = mask_to_polygons(mask)
    y, x = origin
    if outers and not holes:
        return Obj(label, segmentation=[(p + np.array([x, y])).reshape(-1).tolist() for p in outers], score=score)
    if size is not None and (mask.shape != tuple(size) or origin != (0, 0)):
        full = np.zeros(size, dtype=bool)
        full[y : y + mask.shape[0], x : x + mask.shape[1]] = mask
        mask = full
    return Obj(label, mask=mask, score=score)


class Predictions(AnnotatedImages):
    """Predictions of a model on image files, as a dataset that the format writers take.

    Args:
        target: what the model predicts (:mod:`segzoo.data.targets`): ``CLASS_MAP`` (a label map per
            image), ``BOXES`` or ``INSTANCE_MASKS``.
        classes: the model's class names (semantic: every label, background included).
        score_thresh: detections scoring below it are left out.
        mask_thresh: instance mask probability from which a pixel belongs to the object.
    """

    def __init__(self, target: Target, classes: list[str], score_thresh: float = 0.5,
                 mask_thresh: float = 0.5) -> None:
        if target not in self.targets:
            raise ValueError(f"pre-labels are written for semantic, detection and instance models, not {target.name}")
        super().__init__(target)
        self.predicted = target  # the model's; self.target is the dataset's (a class map when written as label maps)
        self.model_classes = list(classes)
        self.score_thresh, self.mask_thresh = float(score_thresh), float(mask_thresh)
        self.offset = 1 if target.label_map and classes and classes[0].lower() in BACKGROUND_NAMES else 0
        if target.label_map:
            self.semantic_classes = list(classes)
            self.object_classes = list(classes[self.offset:])
            self.palette = voc_colormap(len(classes))
        else:
            self.object_classes = list(classes)
        self.paths: list[Path] = []
        self.sizes: list[tuple[int, int]] = []
        self.items: list[Any] = []  # per image: a label map (semantic) or a list of Obj
        self._traced: dict[int, list[Obj]] = {}

    def add(self, path: PathLike, result: dict[str, Any]) -> None:
        """Add one image's :func:`segzoo.predict` result."""
        path = Path(path)
        if self.predicted.label_map:
            labels = _numpy(result["mask"])
            hw = labels.shape
            item: Any = labels.astype(np.uint8 if len(self.model_classes) <= 256 else np.int32)  # kept small
        else:
            hw = image_size(path)
            scores = _numpy(result["scores"]).astype(np.float64)
            keep = np.flatnonzero(scores >= self.score_thresh)
            keep = keep[np.argsort(-scores[keep], kind="stable")]
            labels = _numpy(result["labels"]).astype(np.int64)
            boxes = _numpy(result["boxes"]).astype(np.float64)
            masks = result.get("masks") if self.target.masks else None
            crops = isinstance(masks, CropMasks)
            masks = _numpy(masks) if masks is not None and not crops else masks
            item = []
            for k in keep:
                if crops:
                    c, y, x = masks.numpy_crop(int(k))
                    if c.any():
                        item.append(shape_object(int(labels[k]), c, float(scores[k]), (y, x), tuple(hw)))
                        continue
                elif masks is not None:
                    m = masks[k].reshape(hw) >= self.mask_thresh
                    if m.any():
                        item.append(shape_object(int(labels[k]), m, float(scores[k])))
                        continue
                item.append(Obj(int(labels[k]), box=tuple(boxes[k].tolist()), score=float(scores[k])))
        self.paths.append(path)
        self.sizes.append((int(hw[0]), int(hw[1])))
        self.items.append(item)

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, index: int) -> Path:
        return self.paths[index]

    def image_hw(self, index: int) -> tuple[int, int]:
        return self.sizes[index]

    def item_name(self, index: int) -> str:
        return self.paths[index].name

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        item = self.items[index]
        if not self.predicted.label_map:
            return list(item)
        if index not in self._traced:  # traced once per image (writers ask more than once)
            self._traced[index] = [shape_object(int(c) - self.offset, item == c) for c in np.unique(item)
                                   if c >= self.offset]
        return list(self._traced[index])

    def semantic_map(self, index: int, height: int, width: int) -> np.ndarray:
        if self.predicted.label_map:
            return self.items[index].astype(np.int64)
        return super().semantic_map(index, height, width)  # objects painted largest first, label k -> k + 1

    def as_label_maps(self) -> Predictions:
        """Detections written as label maps (``mask_folder``): the dataset's target becomes a class map
        (classes: background first)."""
        self.target = CLASS_MAP
        return self


def write_prelabels(predictions: Predictions, dst: PathLike, to: str) -> ConvertReport:
    """Write the predictions into the new folder ``dst`` as format ``to`` (one of :data:`TARGETS`).

    Written to a temporary folder beside ``dst`` and renamed at the end (nothing half-written);
    an existing non-empty ``dst`` is refused.
    """
    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    if not len(predictions):
        raise ValueError("no image was predicted: nothing to write as pre-labels")
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not empty; choose a new folder for the pre-labels")
    report = ConvertReport(f"{predictions.predicted.name} predictions", to, str(dst), classes=predictions.classes)
    if to in ("yolo", "mask_folder") and not predictions.predicted.label_map:
        report.notes.append(f"{to} has no place for scores: they are in the COCO, LabelMe and CVAT pre-labels")
    if to == "mask_folder":
        predictions.as_label_maps()
    write_folder([(SPLIT, predictions)], dst, report, to)
    return report
