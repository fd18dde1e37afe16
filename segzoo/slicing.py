"""Sliced (SAHI-style) inference of detection and instance models on images far larger than their input.

The image is cut into overlapping tiles (:func:`tile_origins`, the arithmetic the semantic sliding
window uses too), the model runs on batches of tiles, the detections are shifted back into the
image's pixels and merged across tiles:

- ``merge="nms"``: class-wise NMS (``torchvision.ops.batched_nms``) at ``iou``;
- ``merge="fuse"``: greedy box fusion, best score first: the detections of the same class whose
  intersection over the *smaller* box is at least ``iou`` join the best one's group (repeated with
  the group's grown box until none joins); the group's box is the union of its boxes, its score the
  best score and its mask the union of its masks. A tree
  cut in two by a tile border comes back whole, which IoU-based NMS cannot do (the halves overlap
  the whole crown by ~0.5 IoU only).

Instance masks never exist at full size: each tile's masks are thresholded at once and kept as
:class:`CropMasks`, one bool crop per detection (its mask's bounding box) and the crop's origin in
the image. They are pasted only when written (:meth:`CropMasks.id_map`, :meth:`CropMasks.mask`),
so a 12-megapixel image with hundreds of detections stays far under 2 GiB (``benchmarks/speed/slicing_memory.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

__all__ = ["MERGES", "CropMasks", "merge_detections", "sliced_detect", "tile_boxes", "tile_origins", "tile_size"]

MERGES = ("nms", "fuse")


def tile_origins(size: int, tile: int, overlap: float, stride: int | None = None) -> list[int]:
    """Start offsets of tiles covering ``[0, size)``; the last tile ends at the border.

    The step is ``stride`` pixels, or ``tile * (1 - overlap)`` without it. With a stride these
    are mmsegmentation's ``slide`` windows (``ceil((size - tile) / stride) + 1`` of them, the
    last moved back to end at the border).
    """
    if tile >= size:
        return [0]
    if stride is None:
        stride = max(1, int(round(tile * (1 - overlap))))
    if stride < 1:
        raise ValueError(f"the sliding-window stride must be >= 1 pixel, got {stride}")
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def tile_size(tile) -> tuple[int, int]:
    """``(height, width)`` of an int or ``(h, w)`` tile size, checked positive."""
    th, tw = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if th < 1 or tw < 1:
        raise ValueError(f"tile must be a positive size, got {tile}")
    return int(th), int(tw)


def tile_boxes(height: int, width: int, tile, overlap: float = 0.25, stride=None) -> list[tuple[int, int, int, int]]:
    """``(y, x, th, tw)`` of the tiles covering a ``height x width`` image, row by row (tiles are clipped
    to the image, so an image smaller than a tile is one tile)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    th, tw = tile_size(tile)
    th, tw = min(th, height), min(tw, width)
    sy, sx = (None, None) if stride is None else tile_size(stride)
    return [(y, x, th, tw) for y in tile_origins(height, th, overlap, sy) for x in tile_origins(width, tw, overlap, sx)]


class CropMasks:
    """Instance masks of a large image as one bool crop per detection and the crop's ``(y, x)`` origin.

    Indexing (an int tensor, a list, a bool tensor or a slice) selects detections, as it does the
    ``boxes``/``scores``/``labels`` tensors beside it. :meth:`mask` pastes one mask at full size,
    :meth:`id_map` all of them into one label image; :meth:`dense` builds the ``K x H x W`` tensor
    that the whole-image path returns (only for small images: it is what this class avoids).
    """

    def __init__(self, crops: Sequence[torch.Tensor], origins: torch.Tensor, size: tuple[int, int]) -> None:
        self.crops = [c.bool() for c in crops]
        self.origins = torch.as_tensor(origins, dtype=torch.int64).reshape(-1, 2)
        self.size = (int(size[0]), int(size[1]))
        if len(self.crops) != len(self.origins):
            raise ValueError(f"{len(self.crops)} crops but {len(self.origins)} origins")

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), *self.size)

    def __getitem__(self, index) -> CropMasks:
        if isinstance(index, torch.Tensor):
            index = index.cpu()
        idx = torch.arange(len(self))[index].reshape(-1)
        return CropMasks([self.crops[i] for i in idx.tolist()], self.origins[idx], self.size)

    def __repr__(self) -> str:
        return f"CropMasks({len(self)} masks on {self.size[0]} x {self.size[1]}, {self.nbytes} bytes)"

    @property
    def nbytes(self) -> int:
        return sum(c.numel() for c in self.crops)

    def cpu(self) -> CropMasks:
        return CropMasks([c.cpu() for c in self.crops], self.origins, self.size)

    def mask(self, k: int) -> torch.Tensor:
        """Detection ``k``'s ``H x W`` bool mask."""
        out = torch.zeros(self.size, dtype=torch.bool)
        (y, x), c = self.origins[k].tolist(), self.crops[k]
        out[y : y + c.shape[0], x : x + c.shape[1]] = c.cpu()
        return out

    def id_map(self, dtype: torch.dtype = torch.int32) -> torch.Tensor:
        """``H x W`` map: 0 background, ``k + 1`` where detection ``k``'s mask is (the lower ``k`` on top)."""
        ids = torch.zeros(self.size, dtype=dtype)
        for k in range(len(self) - 1, -1, -1):
            (y, x), c = self.origins[k].tolist(), self.crops[k].cpu()
            ids[y : y + c.shape[0], x : x + c.shape[1]][c] = k + 1
        return ids

    def dense(self) -> torch.Tensor:
        """``K x H x W`` float masks (0/1), the whole-image path's layout."""
        out = torch.zeros((len(self), *self.size))
        for k, ((y, x), c) in enumerate(zip(self.origins.tolist(), self.crops)):
            out[k, y : y + c.shape[0], x : x + c.shape[1]] = c.cpu().float()
        return out

    def blend(self, image: torch.Tensor, indices: Sequence[int], colors: Sequence[tuple[int, int, int]],
              alpha: float = 0.5) -> torch.Tensor:
        """``image`` (uint8 ``3 x H x W``) with the masks of ``indices`` blended in their ``colors``, crop by crop."""
        out = image.clone()
        for k, color in zip(indices, colors):
            (y, x), c = self.origins[int(k)].tolist(), self.crops[int(k)].cpu()
            if not c.numel():
                continue
            region = out[:, y : y + c.shape[0], x : x + c.shape[1]]
            col = torch.tensor(color, dtype=torch.float32)[:, None]
            region[:, c] = (region[:, c].float() * (1 - alpha) + col * alpha).round().to(out.dtype)
        return out

    def numpy_crop(self, k: int) -> tuple[np.ndarray, int, int]:
        """Detection ``k``'s bool crop as a numpy array with its origin ``(y, x)``."""
        y, x = self.origins[k].tolist()
        return self.crops[k].cpu().numpy(), y, x

    @classmethod
    def from_masks(cls, masks: torch.Tensor, offset: tuple[int, int], size: tuple[int, int],
                   thresh: float = 0.5) -> CropMasks:
        """Crop ``K x h x w`` (or ``K x 1 x h x w``) tile masks to their pixels above ``thresh``; ``offset`` is
        the tile's ``(y, x)`` in the image. An empty mask keeps a 0 x 0 crop."""
        m = masks[:, 0] if masks.dim() == 4 else masks
        m = m > thresh if m.is_floating_point() else m.bool()
        rows, cols = m.any(2), m.any(1)  # (K, h), (K, w)
        crops, origins = [], []
        for k in range(len(m)):
            ys, xs = rows[k].nonzero().flatten(), cols[k].nonzero().flatten()
            if len(ys) == 0:
                crops.append(torch.zeros(0, 0, dtype=torch.bool))
                origins.append((offset[0], offset[1]))
                continue
            y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
            crops.append(m[k, y0:y1, x0:x1].cpu().clone())
            origins.append((offset[0] + y0, offset[1] + x0))
        return cls(crops, torch.tensor(origins, dtype=torch.int64).reshape(-1, 2), size)

    @classmethod
    def cat(cls, parts: Sequence[CropMasks], size: tuple[int, int]) -> CropMasks:
        crops = [c for p in parts for c in p.crops]
        origins = torch.cat([p.origins for p in parts]) if parts else torch.zeros(0, 2, dtype=torch.int64)
        return cls(crops, origins, size)

    def union(self, group: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """The union of the masks of ``group`` as one crop and its origin."""
        live = [k for k in group if self.crops[k].numel()]
        if not live:
            return torch.zeros(0, 0, dtype=torch.bool), tuple(self.origins[group[0]].tolist())
        y0 = min(int(self.origins[k, 0]) for k in live)
        x0 = min(int(self.origins[k, 1]) for k in live)
        y1 = max(int(self.origins[k, 0]) + self.crops[k].shape[0] for k in live)
        x1 = max(int(self.origins[k, 1]) + self.crops[k].shape[1] for k in live)
        out = torch.zeros(y1 - y0, x1 - x0, dtype=torch.bool)
        for k in live:
            (y, x), c = self.origins[k].tolist(), self.crops[k]
            out[y - y0 : y - y0 + c.shape[0], x - x0 : x - x0 + c.shape[1]] |= c
        return out, (y0, x0)


def _ios(boxes: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Intersection of each of ``boxes`` (K x 4) with ``best`` (4) over the smaller of the two areas."""
    lt = torch.maximum(boxes[:, :2], best[:2])
    rb = torch.minimum(boxes[:, 2:], best[2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1)
    best_area = (best[2:] - best[:2]).clamp(min=0).prod()
    return inter / torch.minimum(area, best_area).clamp(min=1e-6)


def _fuse(det: dict, iou: float) -> dict:
    """Greedy fusion of all of ``det`` (best first; see the module's doc)."""
    boxes, scores, labels = det["boxes"].float(), det["scores"].float(), det["labels"]
    masks = det.get("masks")
    order = torch.argsort(scores, descending=True, stable=True)
    free = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    b, lab = boxes[order], labels[order]
    groups = []
    for i in range(len(order)):
        if not free[i]:
            continue
        free[i] = False
        group, box = [i], b[i]
        while True:  # the group's union box grows as pieces join: join what overlaps it now
            members = (free & (lab == lab[i])).nonzero().flatten()
            joined = members[_ios(b[members], box) >= iou] if len(members) else members
            if not len(joined):
                break
            free[joined] = False
            group += joined.tolist()
            box = torch.cat([b[group, :2].min(0).values, b[group, 2:].max(0).values])
        groups.append((group, box))
    out_boxes = torch.stack([box for _, box in groups]) if groups else boxes.new_zeros(0, 4)
    groups = [g for g, _ in groups]
    first = order[[g[0] for g in groups]] if groups else order[:0]
    out = {k: v[first] for k, v in det.items() if k != "masks"}
    out["boxes"] = out_boxes.to(det["boxes"].dtype)
    if masks is not None:
        unions = [masks.union(order[g].tolist()) for g in groups]
        out["masks"] = CropMasks([u[0] for u in unions],
                                 torch.tensor([u[1] for u in unions], dtype=torch.int64).reshape(-1, 2), masks.size)
    return out


def _select(det: dict, idx: torch.Tensor) -> dict:
    return {k: v[idx] for k, v in det.items()}


def _cat(parts: Sequence[dict], size) -> dict:
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "masks"}
    if "masks" in parts[0]:
        out["masks"] = CropMasks.cat([p["masks"] for p in parts], size)
    return out


def merge_detections(det: dict, merge: str = "nms", iou: float = 0.5, cut: torch.Tensor | None = None) -> dict:
    """Merge the detections of overlapping tiles (``boxes``, ``scores``, ``labels``[, ``masks``
    as :class:`CropMasks`]) by class-wise NMS or by box fusion (see the module's doc).

    ``cut`` (bool per detection) marks those touching an inner tile border. With it, fusion
    first drops each cut detection that lies within a whole (not cut) one of its class (a piece of
    an object another tile saw whole), fuses the remaining cut pieces with each other, then runs
    class-wise NMS over all; without it, every detection may fuse with every other.
    """
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
    boxes, scores, labels = det["boxes"].float(), det["scores"].float(), det["labels"]
    if merge == "nms":
        return _select(det, batched_nms(boxes, scores, labels, iou))
    if cut is None:
        return _fuse(det, iou)
    cut = cut.to(boxes.device).bool()
    whole, pieces = (~cut).nonzero().flatten(), cut.nonzero().flatten()
    if len(pieces) and len(whole):
        lt = torch.maximum(boxes[pieces, None, :2], boxes[None, whole, :2])
        rb = torch.minimum(boxes[pieces, None, 2:], boxes[None, whole, 2:])
        inter = (rb - lt).clamp(min=0).prod(2)  # (P, W)
        area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1)
        ios = inter / torch.minimum(area[pieces, None], area[None, whole]).clamp(min=1e-6)
        same = labels[pieces, None] == labels[None, whole]
        pieces = pieces[~((ios >= iou) & same).any(1)]
    size = det["masks"].size if "masks" in det else None
    merged = _cat([_select(det, whole), _fuse(_select(det, pieces), iou)], size)
    return merge_detections(merged, "nms", iou)


def _cut(boxes: torch.Tensor, y: int, x: int, th: int, tw: int, h: int, w: int, margin: float = 2.0) -> torch.Tensor:
    """Which of a tile's ``boxes`` (tile pixels) touch one of its borders inside the image."""
    cut = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if x > 0:
        cut |= boxes[:, 0] <= margin
    if y > 0:
        cut |= boxes[:, 1] <= margin
    if x + tw < w:
        cut |= boxes[:, 2] >= tw - margin
    if y + th < h:
        cut |= boxes[:, 3] >= th - margin
    return cut


@torch.no_grad()
def sliced_detect(
    model: nn.Module, image: torch.Tensor, tile, overlap: float = 0.25, *, merge: str = "nms", iou: float = 0.5,
    batch_size: int = 1, mask_thresh: float = 0.5, max_detections: int | None = None,
) -> dict:
    """Detections of one large ``3 x H x W`` image from overlapping tiles, merged across tiles.

    Args:
        model: a detection or instance model taking a list of ``3 x h x w`` images.
        image: float in [0, 1], on the model's device.
        tile: tile size, int or ``(h, w)``; overlap: fraction shared by neighbouring tiles, in [0, 1).
        merge: ``"nms"`` (class-wise NMS) or ``"fuse"`` (box fusion by intersection over the smaller box).
        iou: the overlap from which two detections of the same class are one object.
        batch_size: tiles per forward pass (each tile's masks are cropped before the next batch).
        mask_thresh: probability from which a pixel is in an instance mask.
        max_detections: keep at most this many, best first (None: all).

    Returns:
        ``boxes`` (K x 4 xyxy), ``scores``, ``labels`` on the model's device and, for instance
        models, ``masks`` as :class:`CropMasks` on the CPU; best first.
    """
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _, h, w = image.shape
    tiles = tile_boxes(h, w, tile, overlap)
    parts, mask_parts = [], []
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i : i + batch_size]
        outs = model([image[:, y : y + th, x : x + tw] for y, x, th, tw in chunk])
        for (y, x, th, tw), out in zip(chunk, outs):
            shift = torch.tensor([x, y, x, y], dtype=out["boxes"].dtype, device=out["boxes"].device)
            parts.append({"boxes": out["boxes"] + shift, "scores": out["scores"], "labels": out["labels"],
                          "cut": _cut(out["boxes"], y, x, th, tw, h, w)})
            if "masks" in out:
                mask_parts.append(CropMasks.from_masks(out["masks"], (y, x), (h, w), mask_thresh))
        del outs  # the tile-size float masks go before the next batch
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if mask_parts:
        merged["masks"] = CropMasks.cat(mask_parts, (h, w))
    cut = merged.pop("cut")
    out = merge_detections(merged, merge, iou, cut=cut)
    order = torch.argsort(out["scores"], descending=True, stable=True)
    if max_detections is not None:
        order = order[:max_detections]
    return {k: v[order] for k, v in out.items()}
