"""Predictions of image files, written as pictures, label PNGs and JSON (what ``segzoo infer`` does).

:func:`list_images` finds the image files of paths and folders, :func:`predict_files` predicts each
one with :func:`segzoo.inference.predict` and :func:`write_prediction` writes its files. An
unreadable file is skipped with a :class:`SkippedImageWarning` and reported, never fatal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.utils import draw_segmentation_masks

from segzoo import visualize
from segzoo.data.formats.coco_panoptic import ids_to_rgb
from segzoo.inference import check_tta, fast_model, load_image, predict
from segzoo.slicing import CropMasks

__all__ = ["DRAWN_BELOW", "IMAGE_EXTENSIONS", "FilePrediction", "SkippedImageWarning", "list_images", "predict_files",
           "write_prediction"]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(paths: Sequence[str | os.PathLike], recursive: bool = False) -> list[str]:
    """Image files named directly or found in the given folders (sorted), without duplicates."""
    found: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            walk = os.walk(p) if recursive else [(p, [], os.listdir(p))]
            for root, _, files in walk:
                found += sorted(os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(p):
            found.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {p}")
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {list(map(os.fspath, paths))}")
    return list(dict.fromkeys(found))


DRAWN_BELOW = 3  # detections drawn below the picture threshold when fewer than this reach it


def write_prediction(
    result: dict,
    image,
    out_dir: str | os.PathLike,
    stem: str,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.5,
    alpha: float = 0.5,
    keep_thresh: float = 0.05,
) -> list[str]:
    """Write the files of one :func:`predict` result; returns their paths.

    Semantic: ``STEM_overlay.png`` (with a legend when ``class_names`` are known) and
    ``STEM_mask.png`` (palettised PNG whose pixel values are the labels; binary models: 0/1 at the
    checkpoint's threshold). Multi-label: ``STEM_overlay.png`` (every class blended in its colour) and one
    ``STEM_<class>.png`` per class (grey 0/255, the layout ``data.type: mask_folders`` reads back once
    moved to ``masks/<class>/STEM.png``). Detection / instance: ``STEM_overlay.png`` (detections scoring >=
    ``score_thresh``, and when fewer than
    :data:`DRAWN_BELOW` do, the best ones below it in a lighter style with their labels in
    parentheses; a caption under the image says so), ``STEM.json`` (every detection scoring >=
    ``min(keep_thresh, score_thresh)``, best first: ``boxes`` xyxy, ``scores``, 0-based ``labels``
    and ``classes`` names, one entry per detection in each list, plus the two thresholds) and,
    with masks, ``STEM_masks.png`` (0 background, ``k + 1`` for the k-th detection of the json;
    at most 255).
    Panoptic: ``STEM_overlay.png`` (with a legend when ``class_names`` are known), ``STEM_panoptic.png``
    (COCO-panoptic PNG: segment id ``R + 256 G + 256^2 B``, 0 void) and ``STEM.json``
    (``segments_info`` with class names).
    """
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(os.fspath(out_dir), stem)
    written = []
    if "segments" in result:
        info = [{**s, "class": class_names[s["category"]] if class_names and s["category"] < len(class_names)
                 else str(s["category"])} for s in result["segments_info"]]
        names = list(class_names) if class_names else None
        visualize.save_image(visualize.draw_panoptic(image, result["segments"], info, names, alpha=alpha),
                             base + "_overlay.png")
        Image.fromarray(ids_to_rgb(result["segments"])).save(base + "_panoptic.png")
        with open(base + ".json", "w") as f:
            json.dump({"segments_info": info}, f, indent=1)
        return [base + "_overlay.png", base + "_panoptic.png", base + ".json"]
    if "class_masks" in result:  # multi-label: one 0/255 PNG per class, then an overlay of them all
        masks = result["class_masks"]
        n = int(masks.shape[0])
        names = list(class_names) if class_names is not None and len(class_names) == n else [str(k) for k in range(n)]
        overlay = visualize.to_uint8(image)
        colours = [tuple(int(v) for v in c) for c in visualize.color_palette(n + 1)[1:].tolist()]
        for k in range(n):
            if bool(masks[k].any()):
                overlay = draw_segmentation_masks(overlay, masks[k][None].bool(), alpha=alpha, colors=[colours[k]])
        visualize.save_image(overlay, base + "_overlay.png")
        written = [base + "_overlay.png"]
        for k, name in enumerate(names):
            path = f"{base}_{_safe_name(name)}.png"
            Image.fromarray(masks[k].to(torch.uint8).mul(255).numpy(), mode="L").save(path)
            written.append(path)
        return written
    if "mask" in result:
        n = int(result["probs"].shape[0])
        if n == 1:  # a binary model: the 0/1 mask of its threshold, background and foreground
            n = 2
        names = list(class_names) if class_names is not None and len(class_names) == n else None
        overlay = visualize.draw_semantic(image, result["mask"], num_classes=n, class_names=names, alpha=alpha,
                                          legend=names is not None)
        visualize.save_image(overlay, base + "_overlay.png")
        visualize.save_mask(result["mask"], base + "_mask.png")
        return [base + "_overlay.png", base + "_mask.png"]
    order = torch.argsort(result["scores"], descending=True, stable=True)
    order = order[result["scores"][order] >= min(keep_thresh, score_thresh)]
    kept = {k: v[order] for k, v in result.items()}
    overlay = visualize.draw_instances(image, kept, class_names, score_thresh, alpha=alpha, top_k=DRAWN_BELOW)
    confident, weak = visualize.shown_instances(kept["scores"], score_thresh, DRAWN_BELOW)
    caption = f"score >= {score_thresh:g}: {int(confident.sum())}"
    if bool(weak.any()):
        caption += f"; in ( ): best {int(weak.sum())} below"
    visualize.save_image(visualize.add_caption(overlay, caption), base + "_overlay.png")
    written.append(base + "_overlay.png")
    labels = kept["labels"].tolist()
    dets = {
        "boxes": [[round(float(v), 2) for v in b] for b in kept["boxes"].tolist()],
        "scores": [round(float(s), 4) for s in kept["scores"].tolist()],
        "labels": labels,
        "classes": [class_names[k] if class_names and k < len(class_names) else str(k) for k in labels],
        "score_threshold": score_thresh,
        "keep_threshold": min(keep_thresh, score_thresh),
    }
    with open(base + ".json", "w") as f:
        json.dump(dets, f, indent=1)
    written.append(base + ".json")
    if "masks" in kept and len(kept["masks"]) <= 255 and isinstance(kept["masks"], CropMasks):
        visualize.save_mask(kept["masks"].id_map(), base + "_masks.png")
        written.append(base + "_masks.png")
    elif "masks" in kept and len(kept["masks"]) <= 255:
        m = kept["masks"]
        m = (m[:, 0] if m.dim() == 4 else m) > 0.5
        ids = torch.zeros(m.shape[-2:], dtype=torch.int64)
        for k in range(len(m) - 1, -1, -1):  # higher scores painted last, on top
            ids[m[k]] = k + 1
        visualize.save_mask(ids, base + "_masks.png")
        written.append(base + "_masks.png")
    return written


def _safe_name(name: str) -> str:
    """A class name as a file-name part: letters, digits, ``-``, ``_`` and ``.`` kept, the rest ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)) or "class"


class SkippedImageWarning(UserWarning):
    """An image file that could not be read and was skipped."""


@dataclasses.dataclass
class FilePrediction:
    """What :func:`predict_files` did with one file: the files written, or why it was skipped."""

    path: str
    result: dict | None = None
    written: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


def predict_files(
    model: nn.Module,
    files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    tile: int | Sequence[int] | str | None = "auto",
    overlap: float = 0.25,
    tta: str | dict | bool | None = None,
    score_thresh: float = 0.5,
    alpha: float = 0.5,
    class_names: Sequence[str] | None = None,
    keep_thresh: float = 0.05,
    merge: str = "nms",
    fast: bool | dict = True,
) -> Iterator[FilePrediction]:
    """Predict each image file and write its pictures (:func:`write_prediction`) into ``out_dir``.

    A file that cannot be read as an image (corrupt, truncated, not an image) is skipped with
    a warning and reported with its ``error``; the others are still predicted. Two files with
    the same name in different folders are written as ``NAME`` and ``NAME_1``. ``score_thresh``
    decides what the pictures show, ``keep_thresh`` what the json keeps (see
    :func:`write_prediction`); class names default to the checkpoint's (``model.classes``).
    ``tile`` and ``fast`` are :func:`predict`'s (the model is optimized once for all the files).

    Yields:
        One :class:`FilePrediction` per file, in order.
    """
    check_tta(model.task, tta, None if tile == "auto" else tile)
    names = class_names if class_names is not None else getattr(model, "classes", None)
    model = fast_model(model, fast)
    stems: dict[str, int] = {}
    for path in files:
        path = os.fspath(path)
        try:
            image = load_image(path)
        except Exception as e:  # noqa: BLE001 (any failure to read the file skips it)
            reason = " ".join(str(e).split()) or type(e).__name__
            warnings.warn(f"skipped {path}: {reason}", SkippedImageWarning, stacklevel=2)
            yield FilePrediction(path, error=reason)
            continue
        stem = Path(path).stem
        if stem in stems:  # same name in two folders: keep both
            stems[stem] += 1
            stem = f"{stem}_{stems[stem]}"
        else:
            stems[stem] = 0
        result = predict(model, image, tile=tile, overlap=overlap, tta=tta, merge=merge, fast=False)
        written = write_prediction(result, image, out_dir, stem, names, score_thresh=score_thresh, alpha=alpha,
                                   keep_thresh=keep_thresh)
        yield FilePrediction(path, result, written)
