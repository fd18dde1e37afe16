"""Tiny datasets written in the exact layouts the tools and benchmarks produce (shared by the format tests)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from segzoo.data.records import voc_colormap

H, W = 40, 48


def rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def save_palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette([v for c in voc_colormap(256) for v in c])
    im.save(path)


# ---------------------------------------------------------------------------------------------- Pascal VOC
VOC_OBJECTS = (  # (class index in the 21-label map, rows, cols) of the segmented objects
    (8, (5, 15), (6, 20)),     # cat
    (15, (20, 35), (25, 41)),  # person
)


def voc_xml(image_id: str, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    """A VOC2012 Annotations file (boxes given 1-based inclusive: xmin, ymin, xmax, ymax)."""
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    return (f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename><source><database>The VOC2007 "
            f"Database</database></source><size><width>{W}</width><height>{H}</height><depth>3</depth></size>"
            f"<segmented>1</segmented>{objs}</annotation>")


def write_voc(root: Path, ids=("2007_000032", "2007_000039", "2007_000063")) -> Path:
    """``VOCdevkit/VOC2012`` with segmentation (255 borders), objects, boxes and both ImageSets."""
    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation",
              "ImageSets/Main"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    for n, image_id in enumerate(ids):
        Image.fromarray(rgb(seed=n)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        cls = np.zeros((H, W), np.uint8)
        inst = np.zeros((H, W), np.uint8)
        boxes = []
        for k, (c, (r0, r1), (c0, c1)) in enumerate(VOC_OBJECTS, 1):
            cls[r0 - 1:r1 + 1, c0 - 1:c1 + 1] = 255  # the void border
            inst[r0 - 1:r1 + 1, c0 - 1:c1 + 1] = 255
            cls[r0:r1, c0:c1] = c
            inst[r0:r1, c0:c1] = k
            boxes.append((("cat", "person")[k - 1], (c0 + 1, r0 + 1, c1, r1), 0))
        boxes.append(("bottle", (40, 2, 46, 12), 1))  # a difficult object, not segmented
        save_palette_png(voc / "SegmentationClass" / f"{image_id}.png", cls)
        save_palette_png(voc / "SegmentationObject" / f"{image_id}.png", inst)
        (voc / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, boxes))
    for sub in ("Segmentation", "Main"):
        (voc / "ImageSets" / sub / "train.txt").write_text("\n".join(ids[:2]) + "\n")
        (voc / "ImageSets" / sub / "val.txt").write_text(ids[2] + "\n")
        (voc / "ImageSets" / sub / "trainval.txt").write_text("\n".join(ids) + "\n")
    return voc


# ---------------------------------------------------------------------------------------------- YOLO
def write_yolo(root: Path, segment: bool = True, names_as_dict: bool = True) -> Path:
    """An Ultralytics dataset: data.yaml, images/{train,val}, labels/{train,val}/*.txt."""
    for split, n in (("train", 2), ("val", 1)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"{split}_{i}"
            Image.fromarray(rgb(seed=i)).save(root / "images" / split / f"{name}.jpg")
            if segment:  # a triangle of class 1 and a square of class 0, normalised
                lines = [f"1 {12 / W} {4 / H} {30 / W} {4 / H} {21 / W} {20 / H}",
                         f"0 {5 / W} {24 / H} {17 / W} {24 / H} {17 / W} {36 / H} {5 / W} {36 / H}"]
            else:  # boxes: x_centre y_centre width height
                lines = [f"1 {21 / W} {12 / H} {18 / W} {16 / H}", f"0 {11 / W} {30 / H} {12 / W} {12 / H}"]
            (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
    Image.fromarray(rgb(seed=9)).save(root / "images" / "train" / "negative.jpg")  # no label file: no objects
    names = "names:\n  0: square\n  1: triangle\n" if names_as_dict else "names: [square, triangle]\n"
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\n{names}")
    return root


# ---------------------------------------------------------------------------------------------- LabelMe
def _b64_png(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def labelme_shape(label, points, shape_type="polygon", group_id=None, **extra) -> dict:
    return {"label": label, "points": [list(map(float, p)) for p in points], "group_id": group_id,
            "description": "", "shape_type": shape_type, "flags": {}, "mask": None, **extra}


def write_labelme(root: Path) -> Path:
    """Two LabelMe 5.x files: a.json beside a.jpg, and b.json with the image embedded (no b.png)."""
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb(seed=1)).save(root / "a.jpg")
    shapes_a = [
        labelme_shape("cat", [(4, 4), (20, 4), (20, 16), (4, 16)]),
        labelme_shape("dog", [(30, 30), (44, 38)], "rectangle"),
        labelme_shape("dog", [(26, 4), (34, 4), (34, 10)], group_id=1),  # two parts of one dog
        labelme_shape("dog", [(36, 4), (44, 4), (44, 12), (36, 12)], group_id=1),
        labelme_shape("cat", [(12, 30), (12, 36)], "circle"),
        labelme_shape("__ignore__", [(0, 20), (8, 20), (8, 28), (0, 28)]),
        labelme_shape("dog", [(1, 1), (5, 5)], "line"),
    ]
    doc = {"version": "5.5.0", "flags": {}, "shapes": shapes_a, "imagePath": "a.jpg", "imageData": None,
           "imageHeight": H, "imageWidth": W}
    (root / "a.json").write_text(json.dumps(doc, indent=2))
    crop = np.zeros((6, 9), np.uint8)
    crop[1:5, 2:8] = 255
    shapes_b = [labelme_shape("cat", [(10, 20), (18, 25)], "mask", mask=_b64_png(crop))]
    doc_b = {"version": "5.5.0", "flags": {}, "shapes": shapes_b, "imagePath": "b.png",
             "imageData": _b64_png(rgb(seed=2)), "imageHeight": H, "imageWidth": W}
    (root / "b.json").write_text(json.dumps(doc_b))
    return root


# ---------------------------------------------------------------------------------------------- CVAT
def cvat_rle(mask: np.ndarray) -> str:
    """CVAT's mask rle: run lengths over the crop, row-major, starting with background."""
    flat = mask.reshape(-1).astype(bool)
    runs, cur, n = [], False, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    return ", ".join(str(r) for r in runs)


CVAT_MASK = np.array([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0]], dtype=bool)  # at left=30, top=25


def write_cvat(root: Path, project: bool = False) -> Path:
    """A 'CVAT for images 1.1' export: annotations.xml + images/ (project: images/<subset>/)."""
    meta_kind = "project" if project else "task"
    labels = "".join(f"<label><name>{n}</name><color>#ff0000</color><type>any</type><attributes/></label>"
                     for n in ("car", "person", "tree"))
    images = []
    for i, subset in enumerate(("Train", "Validation") if project else (None, None)):
        name = f"frame_{i:06d}.png"
        folder = root / "images" / subset if subset else root / "images"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb(seed=i)).save(folder / name)
        sub = f' subset="{subset}"' if subset else ""
        images.append(
            f'<image id="{i}" name="{name}" width="{W}" height="{H}"{sub}>'
            '<box label="car" source="manual" occluded="0" xtl="2.50" ytl="3.00" xbr="12.00" ybr="9.50" z_order="0">'
            '<attribute name="model">sedan</attribute></box>'
            '<polygon label="person" source="manual" occluded="0" '
            'points="20.00,2.00;28.00,2.00;28.00,14.00;20.00,14.00" z_order="0"></polygon>'
            f'<mask label="tree" source="manual" occluded="0" rle="{cvat_rle(CVAT_MASK)}" left="30" top="25" '
            f'width="{CVAT_MASK.shape[1]}" height="{CVAT_MASK.shape[0]}" z_order="0"></mask>'
            '<polygon label="person" source="manual" occluded="0" points="2.00,20.00;8.00,20.00;8.00,30.00" '
            'group_id="4" z_order="0"></polygon>'
            '<box label="person" source="manual" occluded="0" xtl="10.00" ytl="20.00" xbr="14.00" ybr="30.00" '
            'group_id="4" z_order="0"></box>'
            '<polygon label="car" source="manual" occluded="0" points="36.00,2.00;46.00,2.00;46.00,10.00" z_order="0">'
            '<attribute name="is_crowd">true</attribute></polygon>'
            '<ellipse label="tree" source="manual" occluded="0" cx="40.00" cy="34.00" rx="4.00" ry="3.00" z_order="0">'
            '</ellipse>'
            '<polyline label="car" source="manual" occluded="0" points="1.00,1.00;5.00,5.00" z_order="0"></polyline>'
            '<tag label="car" source="manual"></tag></image>')
    xml = ('<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>'
           f"<meta><{meta_kind}><id>7</id><name>demo</name><size>2</size><mode>annotation</mode>"
           f"<labels>{labels}</labels></{meta_kind}><dumped>2024-01-01</dumped></meta>{''.join(images)}</annotations>")
    (root / "annotations.xml").write_text(xml)
    return root


# ---------------------------------------------------------------------------------------------- benchmarks
CITY_FRAME = "aachen_000000_000019"


def write_cityscapes(root: Path, splits=("train", "val"), frames: int = 1) -> Path:
    """leftImg8bit/{split}/{city}/*_leftImg8bit.png + gtFine/{split}/{city}/*_gtFine_{labelIds,instanceIds,...};
    ``frames`` images per split."""
    for split in splits:
        for k in range(frames):
            _write_city_frame(root, split, CITY_FRAME.replace("000000", f"{k:06d}"))
    return root


def _write_city_frame(root: Path, split: str, frame: str) -> None:
    city = "aachen" if split == "train" else "frankfurt"
    frame = frame.replace("aachen", city)
    img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb()).save(img_dir / f"{frame}_leftImg8bit.png")
    ids = np.full((H, W), 7, np.uint8)   # road
    ids[:10] = 23                        # sky
    ids[10:14] = 4                       # static (ignored)
    ids[20:30, 5:15] = 26                # car 1
    ids[20:30, 20:30] = 26               # car 2
    ids[30:38, 35:45] = 24               # a crowd of persons (no instance ids)
    ids[0:3, 0:3] = 29                   # caravan (ignored)
    inst = ids.astype(np.uint16)
    inst[20:30, 5:15] = 26000
    inst[20:30, 20:30] = 26001
    Image.fromarray(ids, mode="L").save(gt_dir / f"{frame}_gtFine_labelIds.png")
    Image.fromarray(inst).save(gt_dir / f"{frame}_gtFine_instanceIds.png")  # 16-bit grey
    Image.fromarray(rgb(seed=5)).save(gt_dir / f"{frame}_gtFine_color.png")
    (gt_dir / f"{frame}_gtFine_polygons.json").write_text(json.dumps({"imgHeight": H, "imgWidth": W,
                                                                      "objects": []}))


def write_ade20k(root: Path) -> Path:
    """ADEChallengeData2016/{images,annotations}/{training,validation} with grey label PNGs (0 = other)."""
    ade = root / "ADEChallengeData2016"
    for folder, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        (ade / "images" / folder).mkdir(parents=True, exist_ok=True)
        (ade / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb()).save(ade / "images" / folder / f"{stem}.jpg")
        lab = np.zeros((H, W), np.uint8)
        lab[:20] = 3      # sky
        lab[20:, :24] = 1  # wall
        lab[20:, 24:] = 150  # flag
        Image.fromarray(lab, mode="L").save(ade / "annotations" / folder / f"{stem}.png")
    (ade / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    return ade


def write_coco(root: Path, splits=(("train2017", 2), ("val2017", 1))) -> Path:
    """``{split}/*.jpg`` + ``annotations/instances_{split}.json`` with polygon objects of two categories."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 3, "name": "car", "supercategory": "vehicle"}]
    for split, n in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            name = f"{i:012d}.jpg"
            Image.fromarray(rgb(seed=i)).save(root / split / name)
            images.append({"id": i + 1, "file_name": name, "height": H, "width": W})
            for cat, (x0, y0, x1, y1) in ((1, (4, 6, 20, 30)), (3, (26, 10, 44, 34))):
                poly = [x0, y0, x1, y0, x1, y1, x0, y1]
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
                             "segmentation": [[float(v) for v in poly]]})
        doc = {"images": images, "annotations": anns, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def data_config(mapping: dict):
    """A config's ``data`` section (:class:`segzoo.config.DataConfig`) from a plain mapping, as ``segzoo train``
    parses it (``build_dataset`` takes the typed section)."""
    from segzoo.config import DataConfig, parse_section

    return parse_section(DataConfig, mapping, "data.")
