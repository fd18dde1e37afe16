"""COCO-style box and mask AP on in-memory predictions, through pycocotools.

Ground truth and detections are built in memory into ``COCO`` objects (no json files),
so any dataset that yields segzoo targets can be scored the COCO way. When the ground truth
comes as COCO annotations (a COCO dataset's own json entries: ``area``, ``iscrowd`` and ids
as written), the numbers are exactly those of pycocotools' ``COCOeval`` on that json and a
results file of the same detections. pycocotools is the ``coco`` extra:
``pip install segzoo[coco]``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

# order of COCOeval.stats
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


def _require_pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError(
            "COCO AP needs pycocotools: install it with `pip install segzoo[coco]` "
            "(or `pip install pycocotools`)"
        ) from e
    return COCO, COCOeval, mask_utils


def _np(t, dtype=None) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        t = t.numpy()
    a = np.asarray(t)
    return a.astype(dtype) if dtype is not None else a


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = boxes.reshape(-1, 4).astype(np.float64)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


class CocoEvaluator:
    """Accumulates detections and ground truth and scores them with COCOeval.

    Predictions follow the segzoo detection output: one dict per image with ``boxes``
    (K x 4 xyxy input pixels), ``scores`` (K), ``labels`` (K, 0-based) and, for
    ``"segm"``, ``masks`` (K x H x W probabilities, binarised at ``mask_threshold``;
    ``K x 1 x H x W`` is accepted). Targets: ``boxes``, ``labels`` (0-based) and for
    ``"segm"`` ``masks`` (K x H x W), optionally ``iscrowd`` (K), ``area`` (K) and
    ``image_id`` (int; images are numbered in update order otherwise).

    Labels are mapped back to COCO category ids with ``category_ids[label]`` (default
    ``label + 1``). Without an ``area`` the ground-truth area (which decides
    small/medium/large) is the mask area when masks are given, else the box area (COCO's
    convention); objects with ``iscrowd`` 1 are ignore regions, as in COCO.

    ``update(..., annotations=...)`` takes the ground truth of each image as COCO annotation
    dicts instead (``bbox`` xywh, ``category_id``, ``area``, ``iscrowd``, ``segmentation``
    as polygons or RLE, ``id``), e.g. a COCO dataset's own json entries: they are scored as
    written, so the result equals COCOeval on that json.

    ``compute`` returns ``{iou_type}_{stat}`` for stat in AP, AP50, AP75, APs, APm, APl,
    AR1, AR10, AR100, ARs, ARm, ARl as fractions in [0, 1] (NaN where COCOeval reports
    -1, i.e. no ground truth in that area range), plus ``{iou_type}_per_class``: AP of
    each class (by name) at IoU 0.50:0.95.

    Args:
        num_classes: object classes (background excluded).
        iou_types: ``("bbox",)`` or ``("bbox", "segm")`` (or ``("segm",)``).
        category_ids: the COCO category id of each contiguous label.
        class_names: a name per class, used for the per-class results.
        mask_threshold: probability above which a predicted mask pixel is foreground.
    """

    def __init__(
        self,
        num_classes: int,
        iou_types: Sequence[str] = ("bbox",),
        category_ids: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        mask_threshold: float = 0.5,
    ) -> None:
        _require_pycocotools()
        if isinstance(iou_types, str):
            iou_types = (iou_types,)
        bad = [t for t in iou_types if t not in IOU_TYPES]
        if bad or not iou_types:
            raise ValueError(f"iou_types must be a subset of {IOU_TYPES}, got {tuple(iou_types)}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int (object classes only), got {num_classes!r}")
        category_ids = list(range(1, num_classes + 1)) if category_ids is None else [int(c) for c in category_ids]
        if len(category_ids) != num_classes or len(set(category_ids)) != num_classes:
            raise ValueError(
                f"category_ids must hold {num_classes} distinct ids (one per contiguous label), got {category_ids}"
            )
        class_names = [str(c) for c in category_ids] if class_names is None else [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class_names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.iou_types = tuple(iou_types)
        self.category_ids = category_ids
        self.class_names = class_names
        self.mask_threshold = mask_threshold
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.images: list[dict] = []
        self.gt_anns: list[dict] = []  # "id" None: numbered in compute(), after the ids given
        self.dt_anns: dict[str, list[dict]] = {t: [] for t in self.iou_types}
        self._next_id = 0
        self.summary = ""

    # ------------------------------------------------------------------ accumulate
    def update(self, predictions: Sequence[dict], targets: Sequence[dict],
               annotations: Sequence[Sequence[dict] | None] | None = None) -> None:
        """Add one batch: a prediction dict and a target dict per image.

        Args:
            predictions: segzoo detection dicts, one per image.
            targets: target dicts, one per image (``image_id``, and ``size`` ``(H, W)`` when no
                masks tell it).
            annotations: optional COCO annotations of each image (crowd regions included), in
                the image's pixels; where given (not None) they are the image's ground truth
                instead of its target's boxes and masks.
        """
        if isinstance(predictions, dict):
            predictions, targets = [predictions], [targets]
            annotations = None if annotations is None else [annotations]
        predictions, targets = list(predictions), list(targets)
        annotations = [None] * len(targets) if annotations is None else list(annotations)
        if not len(predictions) == len(targets) == len(annotations):
            raise ValueError(f"got {len(predictions)} predictions for {len(targets)} targets and {len(annotations)} "
                             "annotation lists; pass one per image")
        _, _, mask_utils = _require_pycocotools()
        for pred, target, anns in zip(predictions, targets, annotations):
            image_id = target.get("image_id")
            if image_id is None:
                image_id = self._next_id
            image_id = int(torch.as_tensor(image_id).reshape(-1)[0])
            self._next_id = max(self._next_id, image_id + 1)
            h, w = self._image_size(pred, target)
            self.images.append({"id": image_id, "height": h, "width": w})
            if anns is None:
                self._add_targets(image_id, target, mask_utils)
            else:
                self._add_annotations(image_id, anns, h, w, mask_utils)
            self._add_predictions(image_id, pred, mask_utils)

    def _image_size(self, pred: dict, target: dict) -> tuple[int, int]:
        for d, key in ((target, "masks"), (pred, "masks")):
            m = d.get(key)
            if m is not None and len(getattr(m, "shape", ())) >= 2:
                return int(m.shape[-2]), int(m.shape[-1])
        size = target.get("size", target.get("orig_size"))
        if size is not None:
            h, w = (int(v) for v in torch.as_tensor(size).reshape(-1)[-2:])
            return h, w
        if "segm" in self.iou_types:
            raise ValueError("segm evaluation needs masks in targets to know the image size")
        return 0, 0

    def _labels_to_ids(self, labels: np.ndarray, what: str) -> list[int]:
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{what} has label {int(labels.max() if labels.max() >= self.num_classes else labels.min())} "
                f"outside [0, {self.num_classes - 1}]; labels are 0-based object classes (no background)"
            )
        return [self.category_ids[int(k)] for k in labels]

    def _encode(self, masks, h: int, w: int, mask_utils, threshold: float | None) -> list[dict]:
        m = _np(masks)
        if m.ndim == 4:  # K x 1 x H x W
            m = m[:, 0]
        if m.ndim != 3 or tuple(m.shape[1:]) != (h, w):
            raise ValueError(f"masks must be K x H x W at the image size ({h}, {w}), got {m.shape}")
        if len(m) == 0:
            return []
        m = m > threshold if threshold is not None and m.dtype.kind == "f" else m > 0
        rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
        return rles

    def _add_targets(self, image_id: int, target: dict, mask_utils) -> None:
        boxes = _np(target.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
        labels = _np(target.get("labels", np.zeros(0)), np.int64).reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"target of image {image_id} has {len(boxes)} boxes but {len(labels)} labels")
        cats = self._labels_to_ids(labels, f"target of image {image_id}")
        xywh = _xyxy_to_xywh(boxes)
        crowd = _np(target.get("iscrowd", np.zeros(len(boxes))), np.int64).reshape(-1)
        rles = None
        if "segm" in self.iou_types:
            if target.get("masks") is None:
                raise ValueError("segm evaluation needs 'masks' (K x H x W) in every target")
            h, w = self._image_size({}, target)
            rles = self._encode(target["masks"], h, w, mask_utils, threshold=0.5)
        if target.get("area") is not None:
            area = _np(target["area"], np.float64).reshape(-1)
        elif target.get("masks") is not None and len(boxes):
            area = _np(target["masks"]).reshape(len(boxes), -1)
            area = (area > 0.5 if area.dtype.kind == "f" else area > 0).sum(1).astype(np.float64)
        else:
            area = xywh[:, 2] * xywh[:, 3]
        for i in range(len(boxes)):
            ann = {
                "id": None, "image_id": image_id, "category_id": cats[i],
                "bbox": xywh[i].tolist(), "area": float(area[i]), "iscrowd": int(crowd[i]),
            }
            if rles is not None:
                ann["segmentation"] = rles[i]
            self.gt_anns.append(ann)

    def _add_annotations(self, image_id: int, anns: Sequence[dict], h: int, w: int, mask_utils) -> None:
        """COCO annotations as ground truth, kept as written; what COCOeval cannot do without (an
        ``area``, an ``iscrowd``, a crowd region's ``bbox``) is filled in as COCO defines it."""
        known = set(self.category_ids)
        for a in anns:
            a = copy.deepcopy(dict(a))  # COCOeval rewrites segmentations in place
            if a.get("category_id") not in known:
                raise ValueError(f"annotation {a.get('id')} of image {image_id} has category_id "
                                 f"{a.get('category_id')!r}, not one of the category ids {self.category_ids}")
            a["image_id"] = image_id
            a.setdefault("id", None)
            a["iscrowd"] = int(a.get("iscrowd", 0) or 0)
            segm = a.get("segmentation")
            if a.get("bbox") is None or a.get("area") is None:
                rle = self._rle(segm, h, w, mask_utils) if segm else None
                if a.get("bbox") is None:
                    if rle is None:
                        raise ValueError(f"annotation {a.get('id')} of image {image_id} has neither bbox nor "
                                         "segmentation")
                    a["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
                if a.get("area") is None:
                    a["area"] = float(mask_utils.area(rle)) if rle is not None else float(a["bbox"][2] * a["bbox"][3])
            if "segm" in self.iou_types and not segm:
                raise ValueError(f"segm evaluation needs a segmentation in every annotation; annotation "
                                 f"{a.get('id')} of image {image_id} has none")
            self.gt_anns.append(a)

    @staticmethod
    def _rle(segm, h: int, w: int, mask_utils) -> dict:
        """A COCO segmentation (polygons, RLE) as one compressed RLE, as ``COCO.annToRLE`` makes it."""
        if isinstance(segm, list):
            return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        if isinstance(segm.get("counts"), list):
            return mask_utils.frPyObjects(segm, *segm["size"])
        return segm

    def _add_predictions(self, image_id: int, pred: dict, mask_utils) -> None:
        boxes = _np(pred.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
        scores = _np(pred.get("scores", np.zeros(0)), np.float64).reshape(-1)
        labels = _np(pred.get("labels", np.zeros(0)), np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(
                f"prediction for image {image_id} has {len(boxes)} boxes, {len(scores)} scores and "
                f"{len(labels)} labels; they must match"
            )
        cats = self._labels_to_ids(labels, f"prediction for image {image_id}")
        xywh = _xyxy_to_xywh(boxes)
        if "bbox" in self.iou_types:
            for i in range(len(boxes)):
                self.dt_anns["bbox"].append({
                    "image_id": image_id, "category_id": cats[i], "bbox": xywh[i].tolist(),
                    "score": float(scores[i]), "area": float(xywh[i, 2] * xywh[i, 3]), "iscrowd": 0,
                })
        if "segm" in self.iou_types and len(boxes):
            if pred.get("masks") is None:
                raise ValueError("segm evaluation needs 'masks' in predictions (use an instance model)")
            h, w = self._image_size(pred, {})
            rles = self._encode(pred["masks"], h, w, mask_utils, threshold=self.mask_threshold)
            areas = mask_utils.area(rles)
            mboxes = mask_utils.toBbox(rles)
            for i, rle in enumerate(rles):
                self.dt_anns["segm"].append({
                    "image_id": image_id, "category_id": cats[i], "segmentation": rle,
                    "score": float(scores[i]), "area": float(areas[i]), "bbox": mboxes[i].tolist(), "iscrowd": 0,
                })

    def reduce(self) -> None:
        """Gather every rank's images and annotations when ``torch.distributed`` is initialised.

        Image ids must be unique across ranks (pass ``image_id`` in the targets).
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.images, self.gt_anns, self.dt_anns))
        self.reset()
        for images, gts, dts in gathered:
            self.images += images
            self.gt_anns += gts
            for k in self.iou_types:
                self.dt_anns[k] += dts[k]

    # ------------------------------------------------------------------ score
    def _coco(self, annotations: list[dict]):
        COCO, _, _ = _require_pycocotools()
        coco = COCO()
        images = list({im["id"]: im for im in self.images}.values())
        coco.dataset = {
            "images": images,
            "categories": [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names)],
            "annotations": annotations,
        }
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def compute(self) -> dict:
        """Run COCOeval for each IoU type; the printed summary is kept in ``self.summary``."""
        _, COCOeval, _ = _require_pycocotools()
        if not self.images:
            raise ValueError("CocoEvaluator.compute() called before any update()")
        results: dict = {}
        summaries = []
        given = [a["id"] for a in self.gt_anns if a["id"] is not None]
        next_id = max(given, default=0) + 1
        gt_anns = []
        for a in self.gt_anns:
            if a["id"] is None:
                a, next_id = {**a, "id": next_id}, next_id + 1
            gt_anns.append(copy.deepcopy(a))  # COCOeval rewrites segmentations in place
        gt = self._coco(gt_anns)
        for iou_type in self.iou_types:
            dts = [{**a, "id": i + 1} for i, a in enumerate(self.dt_anns[iou_type])]
            dt = self._coco(dts)
            ev = COCOeval(gt, dt, iouType=iou_type)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            summaries.append(f"{iou_type}:\n{buf.getvalue()}")
            for name, v in zip(STAT_NAMES, ev.stats):
                results[f"{iou_type}_{name}"] = float(v) if v >= 0 else math.nan
            # precision: (iou thresholds, recall points, classes, area ranges, max dets)
            prec = ev.eval["precision"][:, :, :, 0, -1]
            per_class = {}
            for cat, name in zip(self.category_ids, self.class_names):
                p = prec[:, :, list(ev.params.catIds).index(cat)]
                p = p[p > -1]
                per_class[name] = float(p.mean()) if p.size else math.nan
            results[f"{iou_type}_per_class"] = per_class
        self.summary = "\n".join(summaries)
        return results
