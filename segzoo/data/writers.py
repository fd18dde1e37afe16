"""LabelMe and CVAT writers: datasets (or a model's pre-labels) written as the labelling tools import them.

Used by ``segzoo data convert --to {labelme,cvat}`` and ``segzoo infer --to ...``. Objects with
polygons keep them; pixel masks are traced into polygons (:func:`~segzoo.data.contours.mask_to_polygons`,
along pixel edges, so they rasterise back to the same pixels) unless they have holes, which
polygons cannot hold: those are written as the formats' masks (LabelMe ``mask`` shapes, CVAT
``<mask>`` run lengths), losslessly. An object of several parts is one group (LabelMe
``group_id``, CVAT ``group_id``). Scores (:attr:`Obj.score`, set on pre-labels) are kept: a
``score`` key and a ``description`` on LabelMe shapes, a ``score`` attribute on CVAT shapes (declared
on every label in ``<meta>``, as CVAT requires), whose ``source`` is then ``auto``.
"""

from __future__ import annotations

import base64
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from segzoo.data.contours import mask_to_polygons
from segzoo.data.records import Obj

IGNORE_LABEL = "__ignore__"  # LabelMe's crowd label (segzoo.data.formats.labelme reads it back)


def object_shapes(obj: Obj, h: int, w: int) -> tuple[str, object]:
    """``("polygons", [K x 2 arrays])``, ``("mask", (x1, y1, crop))`` or ``("box", (x1, y1, x2, y2))``."""
    if isinstance(obj.segmentation, list) and obj.segmentation:
        return "polygons", [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in obj.segmentation if len(p) >= 6]
    if obj.has_shape:
        m = obj.pixels(h, w)
        outers, holes = mask_to_polygons(m)
        if outers and not holes:
            return "polygons", outers
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if not len(rows):
            return "polygons", []
        y1, y2, x1, x2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return "mask", (int(x1), int(y1), m[y1:y2, x1:x2])
    return "box", obj.xyxy(h, w)


def _png_base64(crop: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(crop.astype(np.uint8) * 255, mode="L").convert("1").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _points(pts: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in pts]


def labelme_shapes(objs: list[Obj], classes: list[str], h: int, w: int) -> list[dict]:
    """The LabelMe ``shapes`` of an image's objects (one ``group_id`` per object of several shapes)."""
    shapes, group = [], 0
    for obj in objs:
        label = IGNORE_LABEL if obj.crowd else classes[obj.label]
        kind, geo = object_shapes(obj, h, w)
        if kind == "polygons":
            parts = [{"points": _points(p), "shape_type": "polygon"} for p in geo]
        elif kind == "mask":
            x1, y1, crop = geo
            corners = [[float(x1), float(y1)], [float(x1 + crop.shape[1] - 1), float(y1 + crop.shape[0] - 1)]]
            parts = [{"points": corners, "shape_type": "mask", "mask": _png_base64(crop)}]
        else:
            x1, y1, x2, y2 = geo
            parts = [{"points": [[x1, y1], [x2, y2]], "shape_type": "rectangle"}]
        gid = None
        if len(parts) > 1:
            group += 1
            gid = group
        for part in parts:
            shape = {"label": label, "group_id": gid, "flags": {}, "description": "", **part}
            if obj.score is not None:
                shape["score"] = round(float(obj.score), 4)
                shape["description"] = f"score {obj.score:.3f}"
            shapes.append(shape)
    return shapes


def write_labelme(parts, dst: Path, report, copy_image) -> None:
    """``NAME.json`` beside each copied image (``<split>/`` folders when there are several splits) and
    ``labels.txt`` (labelme's class list: ``__ignore__``, ``_background_``, then the classes in id order)."""
    for split, ds in parts:
        folder = dst / split if len(parts) > 1 else dst
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for i, name in copy_image(ds, folder):
            h, w = ds.image_hw(i)
            objs = ds.objects(i, h, w)
            doc = {"version": "5.5.0", "flags": {}, "shapes": labelme_shapes(objs, ds.object_classes, h, w),
                   "imagePath": name, "imageData": None, "imageHeight": h, "imageWidth": w}
            (folder / f"{Path(name).stem}.json").write_text(json.dumps(doc, indent=1))
            count += len(objs)
            report.crowd_kept += sum(o.crowd for o in objs)
        report.splits[split] = (len(ds), count)
    classes = parts[0][1].object_classes
    (dst / "labels.txt").write_text("\n".join([IGNORE_LABEL, "_background_", *classes]) + "\n")


def cvat_rle(crop: np.ndarray) -> str:
    """CVAT's mask run lengths: row-major over the crop, starting with a run of background."""
    flat = crop.reshape(-1).astype(bool)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return ", ".join(str(int(r)) for r in runs)


def _cvat_elements(image: ET.Element, obj: Obj, classes: list[str], h: int, w: int, group: int) -> int:
    kind, geo = object_shapes(obj, h, w)
    common = {"label": classes[obj.label], "occluded": "0", "source": "auto" if obj.score is not None else "manual",
              "z_order": "0"}
    elements = []
    if kind == "polygons":
        for p in geo:
            elements.append(ET.SubElement(image, "polygon", {
                **common, "points": ";".join(f"{x:.3f},{y:.3f}" for x, y in p.tolist())}))
    elif kind == "mask":
        x1, y1, crop = geo
        elements.append(ET.SubElement(image, "mask", {
            **common, "rle": cvat_rle(crop), "left": str(x1), "top": str(y1), "width": str(crop.shape[1]),
            "height": str(crop.shape[0])}))
    else:
        x1, y1, x2, y2 = geo
        elements.append(ET.SubElement(image, "box", {**common, "xtl": f"{x1:.3f}", "ytl": f"{y1:.3f}",
                                                     "xbr": f"{x2:.3f}", "ybr": f"{y2:.3f}"}))
    if len(elements) > 1:
        group += 1
    for el in elements:
        if len(elements) > 1:
            el.set("group_id", str(group))
        if obj.crowd:
            ET.SubElement(el, "attribute", {"name": "is_crowd"}).text = "true"
        if obj.score is not None:
            ET.SubElement(el, "attribute", {"name": "score"}).text = f"{obj.score:.4f}"
    return group


def write_cvat(parts, dst: Path, report, copy_image) -> None:
    """``annotations.xml`` (CVAT for images 1.1) and ``images/`` (``images/<split>/`` and ``subset``
    attributes when there are several splits)."""
    classes = parts[0][1].object_classes
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(meta, "name").text = Path(report.dst).name  # dst is the temporary folder
    labels = ET.SubElement(meta, "labels")
    scored = any(o.score is not None for _, ds in parts for i in range(len(ds)) for o in ds.objects(i, *ds.image_hw(i)))
    crowd = any(o.crowd for _, ds in parts for i in range(len(ds)) for o in ds.objects(i, *ds.image_hw(i)))
    for c in classes:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = c
        ET.SubElement(label, "type").text = "any"
        attributes = ET.SubElement(label, "attributes")
        for name, kind, default, values in (("score", "number", "0", "0;1;0.0001"),
                                            ("is_crowd", "checkbox", "false", "false")):
            if (name == "score" and scored) or (name == "is_crowd" and crowd):
                at = ET.SubElement(attributes, "attribute")
                for k, v in (("name", name), ("mutable", "False"), ("input_type", kind), ("default_value", default),
                             ("values", values)):
                    ET.SubElement(at, k).text = v
    image_id = 0
    for split, ds in parts:
        folder = dst / "images" / split if len(parts) > 1 else dst / "images"
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for i, name in copy_image(ds, folder):
            h, w = ds.image_hw(i)
            attrs = {"id": str(image_id), "name": name, "width": str(w), "height": str(h)}
            if len(parts) > 1:
                attrs["subset"] = split
            image = ET.SubElement(root, "image", attrs)
            group = 0
            for obj in ds.objects(i, h, w):
                group = _cvat_elements(image, obj, classes, h, w, group)
                count += 1
                report.crowd_kept += obj.crowd
            image_id += 1
        report.splits[split] = (len(ds), count)
    ET.indent(root)
    (dst / "annotations.xml").write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
