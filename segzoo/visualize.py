"""Pictures of predictions: semantic overlays with a legend, instances, side-by-side panels.

Every drawing function takes an image as a float ``3 x H x W`` tensor in [0, 1], a uint8
``3 x H x W`` tensor, a PIL image, an ``H x W x 3`` numpy array or a file path, and returns
a uint8 ``3 x H x W`` tensor (torchvision's ``draw_segmentation_masks`` and
``draw_bounding_boxes`` do the drawing). :func:`save_image` writes any of them to a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont
from torchvision.ops import masks_to_boxes
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from segzoo.data import image as image_file
from segzoo.slicing import CropMasks

__all__ = [
    "add_caption",
    "color_palette",
    "draw_instances",
    "draw_legend",
    "draw_panoptic",
    "draw_semantic",
    "instance_palette",
    "save_image",
    "save_mask",
    "shown_instances",
    "side_by_side",
    "to_uint8",
]


def color_palette(num_colors: int = 256) -> torch.Tensor:
    """The PASCAL VOC colour map: uint8 ``num_colors x 3``; colour 0 is black (background).

    Colours are made by spreading the bits of the class index over the three channels, so
    neighbouring indices get clearly different colours.
    """
    idx = torch.arange(num_colors)
    out = torch.zeros(num_colors, 3, dtype=torch.int64)
    c = idx.clone()
    for shift in range(7, -1, -1):  # 3 bits of the index per step, most significant bit first
        for ch in range(3):
            out[:, ch] |= ((c >> ch) & 1) << shift
        c = c >> 3
    return out.to(torch.uint8)


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` broken at spaces into lines of at most ``width`` pixels (a longer word keeps its line)."""
    lines: list[str] = []
    for word in str(text).split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _fit_text(text: str, width: int, sizes: Sequence[int] = (12, 11, 10, 9, 8)) -> tuple[object, list[str], int]:
    """A font and lines for ``text`` within ``width`` pixels: ``(font, lines, line height)``.

    One line in the largest of ``sizes`` (down to 10 pixels) that fits; else the text broken at
    spaces, in the largest size whose lines fit (the smallest size when none does).
    """
    for size in sizes:
        font = _font(size)
        if size >= min(10, sizes[0]) and font.getlength(str(text)) <= width:
            return font, [str(text)], size + 3
    for size in sizes:
        font = _font(size)
        lines = _wrap(text, font, width)
        if all(font.getlength(line) <= width for line in lines):
            break
    return font, lines, size + 3


def add_caption(image, text: str, size: int = 11) -> torch.Tensor:
    """The image with ``text`` on a white band below it, wrapped to the image's width."""
    img = to_uint8(image)
    w = img.shape[-1]
    font, lines, line_h = _fit_text(text, w - 4, sizes=(size, size - 1, size - 2, 8))
    band = Image.new("RGB", (w, line_h * len(lines) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((2, 2 + i * line_h), line, fill=(0, 0, 0), font=font)
    return torch.cat([img, to_uint8(band)], dim=1)


def to_uint8(image) -> torch.Tensor:
    """Any supported image (see the module docstring) as a uint8 ``3 x H x W`` CPU tensor."""
    image = image_file.read_image(image).as_subclass(torch.Tensor).cpu()
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"images must be 3 x H x W (or H x W x 3 for numpy), got shape {tuple(image.shape)}")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    image = image[:3]
    if image.is_floating_point():
        image = (image.float().clamp(0, 1) * 255).round()
    return image.to(torch.uint8).contiguous()


def _colors(palette: torch.Tensor | Sequence | None, n: int) -> list[tuple[int, int, int]]:
    pal = color_palette(max(n, 1)) if palette is None else torch.as_tensor(palette, dtype=torch.uint8).reshape(-1, 3)
    if len(pal) < n:
        raise ValueError(f"palette has {len(pal)} colours but {n} classes need drawing; pass a longer palette")
    return [tuple(int(v) for v in c) for c in pal[:n]]


def draw_legend(
    class_names: Sequence[str], palette: torch.Tensor | Sequence | None = None, height: int | None = None,
    classes: Sequence[int] | None = None,
) -> torch.Tensor:
    """A legend panel: one coloured square and name per class, uint8 ``3 x height x w``.

    Args:
        class_names: a name per class index.
        palette: ``C x 3`` uint8 colours (the VOC colour map by default).
        height: panel height (at least the rows need); rows wrap into columns when short.
        classes: the class indices to list (all by default).
    """
    classes = list(range(len(class_names))) if classes is None else list(classes)
    colors = _colors(palette, len(class_names))
    font, row = _font(11), 16
    per_col = max(1, (height - 8) // row) if height else len(classes)
    n_cols = max(1, -(-len(classes) // per_col))
    name_w = max([int(font.getlength(str(class_names[k]))) for k in classes] + [10])
    col_w = name_w + 28
    h = height or (8 + row * max(1, len(classes)))
    panel = Image.new("RGB", (col_w * n_cols + 4, h), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, k in enumerate(classes):
        x, y = 4 + (i // per_col) * col_w, 4 + (i % per_col) * row
        draw.rectangle([x, y + 1, x + 12, y + 13], fill=colors[k], outline=(0, 0, 0))
        draw.text((x + 18, y + 1), str(class_names[k]), fill=(0, 0, 0), font=font)
    return to_uint8(panel)


BACKGROUND_NAMES = ("background", "bg", "_background_", "__background__")


def is_background_name(name: str) -> bool:
    """True for the usual names of the background class (case-insensitive)."""
    return str(name).strip().lower() in BACKGROUND_NAMES


def draw_semantic(
    image,
    mask: torch.Tensor,
    num_classes: int | None = None,
    palette: torch.Tensor | Sequence | None = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    ignore_index: int | None = 255,
    legend: bool = False,
    skip_background: bool | None = None,
) -> torch.Tensor:
    """Overlay a semantic mask on an image.

    Args:
        image: the image (see the module docstring), ``H x W``.
        mask: int labels ``H x W`` (a leading 1 is dropped) or scores ``C x H x W`` (argmax).
        num_classes: number of labels; defaults to ``len(class_names)`` or ``mask.max() + 1``.
        palette: ``C x 3`` uint8 colours; the VOC colour map by default.
        class_names: a name per class (for the legend).
        alpha: opacity of the mask colours.
        ignore_index: label left undrawn.
        legend: append a legend panel of the classes present on the right (the result is
            then wider than the image); needs ``class_names``.
        skip_background: leave class 0 undrawn, so that the photo shows through where nothing was
            found. ``None`` (default): when class 0 is the background, i.e. it is named
            "background" (or "bg", "_background_") or there are no names; a class 0 with another name
            (Cityscapes' "road") is drawn.

    Returns:
        uint8 ``3 x H x W`` (``3 x H x (W + legend width)`` with ``legend=True``).
    """
    img = to_uint8(image)
    mask = torch.as_tensor(mask).detach().cpu()
    if mask.is_floating_point() and mask.dim() == 3 and mask.shape[0] > 1:
        mask = mask.argmax(0)
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2 or tuple(mask.shape) != tuple(img.shape[-2:]):
        raise ValueError(f"mask must be H x W = {tuple(img.shape[-2:])} like the image, got {tuple(mask.shape)}")
    mask = mask.long()
    valid = mask != ignore_index if ignore_index is not None else torch.ones_like(mask, dtype=torch.bool)
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else int(mask[valid].max()) + 1 if valid.any() else 1
    colors = _colors(palette, num_classes)
    present = [int(k) for k in torch.unique(mask[valid]) if 0 <= k < num_classes]
    if valid.any() and int(mask[valid].max()) >= num_classes:
        raise ValueError(f"mask has label {int(mask[valid].max())} but num_classes={num_classes}")
    if skip_background is None:
        skip_background = class_names is None or is_background_name(class_names[0])
    drawn = [k for k in present if not (skip_background and k == 0)]
    out = img
    if drawn:
        ids = torch.tensor(drawn)
        masks = mask[None] == ids[:, None, None]  # (K, H, W) one boolean mask per present class
        out = draw_segmentation_masks(img, masks, alpha=alpha, colors=[colors[k] for k in drawn])
    if legend:
        if class_names is None:
            raise ValueError("legend=True needs class_names")
        if len(class_names) < num_classes:
            raise ValueError(f"got {len(class_names)} class_names for {num_classes} classes")
        panel = draw_legend(class_names, colors, height=out.shape[1], classes=drawn)
        if panel.shape[1] > out.shape[1]:
            panel = panel[:, : out.shape[1]]
        out = torch.cat([out, panel], dim=2)
    return out


def draw_instances(
    image,
    prediction: dict,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.5,
    mask_thresh: float = 0.5,
    alpha: float = 0.5,
    palette: torch.Tensor | Sequence | None = None,
    width: int = 2,
    top_k: int = 0,
) -> torch.Tensor:
    """Draw detections or ground-truth instances: masks, boxes and ``"name 0.93"`` labels.

    Args:
        image: the image (see the module docstring).
        prediction: a segzoo detection dict: ``boxes`` (K x 4 xyxy), ``labels`` (K, 0-based),
            optional ``scores`` (K; ground truth has none) and ``masks`` (K x H x W).
        class_names: a name per class; the label index otherwise.
        score_thresh: instances scoring below it are not drawn (but see ``top_k``).
        mask_thresh: probability above which a mask pixel is drawn.
        alpha: opacity of the masks.
        palette: colours per class (:func:`instance_palette`: no class is black).
        width: box line width.
        top_k: when fewer than ``top_k`` instances reach ``score_thresh``, the best-scoring ones
            below it are drawn too, up to ``top_k`` in all, in a lighter style (1-pixel boxes,
            fainter masks, labels in parentheses: ``"(name 0.31)"``), so the picture of a weak
            model still shows what it found.

    Returns:
        uint8 ``3 x H x W``.
    """
    img = to_uint8(image)
    boxes = torch.as_tensor(prediction.get("boxes", torch.zeros(0, 4))).detach().cpu().float().reshape(-1, 4)
    labels = torch.as_tensor(prediction.get("labels", torch.zeros(len(boxes)))).detach().cpu().long().reshape(-1)
    scores = prediction.get("scores")
    if scores is not None:
        scores = torch.as_tensor(scores).detach().cpu().float().reshape(-1)
    keep, weak = shown_instances(scores, score_thresh, top_k, len(boxes))
    n_cls = max(len(class_names) if class_names else 0, int(labels.max()) + 1 if len(labels) else 0)
    colors = _colors(instance_palette(n_cls) if palette is None else palette, n_cls)
    masks = prediction.get("masks")
    if masks is not None and not isinstance(masks, CropMasks):  # CropMasks (sliced inference) are drawn crop by crop
        masks = torch.as_tensor(masks).detach().cpu()
        if masks.dim() == 4:  # K x 1 x H x W
            masks = masks[:, 0]
        masks = masks > mask_thresh if masks.is_floating_point() else masks.bool()
    out = img
    # the lighter ones first, so the confident ones are drawn on top
    for sel, line, opacity, fmt in ((weak, 1, alpha / 2, "({})"), (keep, width, alpha, "{}")):
        idx = sel.nonzero().flatten()
        if len(idx) == 0:
            continue
        inst_colors = [colors[int(labels[i])] for i in idx]
        if isinstance(masks, CropMasks):
            out = masks.blend(out, idx.tolist(), inst_colors, opacity)
        elif masks is not None:
            out = draw_segmentation_masks(out, masks[idx], alpha=opacity, colors=inst_colors)
        names = [class_names[int(labels[i])] if class_names else str(int(labels[i])) for i in idx]
        if scores is not None:
            names = [fmt.format(f"{n} {float(scores[i]):.2f}") for n, i in zip(names, idx)]
        h, w = img.shape[-2:]
        b = boxes[idx].clone()
        b[:, 0::2] = b[:, 0::2].clamp(0, w - 1)
        b[:, 1::2] = b[:, 1::2].clamp(0, h - 1)
        b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2])  # degenerate boxes (x2 a rounding error below x1) still draw
        out = draw_bounding_boxes(out, b, colors=inst_colors, width=line)
        out = draw_box_labels(out, b, names, inst_colors)
    return out


def _text_color(rgb) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``rgb`` (ITU-R BT.601 luma)."""
    r, g, b = (int(v) for v in rgb)
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_box_labels(image: torch.Tensor, boxes: torch.Tensor, labels: Sequence[str], colors: Sequence) -> torch.Tensor:
    """Labels on filled tags in each box's colour (black or white text, whichever contrasts), above
    the box where there is room and inside its top edge otherwise, kept inside the image; the font
    grows with the image (10-16 px), so that labels stay readable on small and large pictures alike."""
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(pil)
    h, w = image.shape[-2:]
    font = _font(max(10, min(16, min(h, w) // 20)))
    for box, text, color in zip(boxes.tolist(), labels, colors):
        color = tuple(int(v) for v in (ImageColor.getrgb(color) if isinstance(color, str) else color))
        left, top, right, bottom = draw.textbbox((0, 0), str(text), font=font)
        tw, th = right - left + 4, bottom - top + 3
        x = min(max(0, int(box[0])), max(0, w - tw))
        y = int(box[1]) - th if int(box[1]) - th >= 0 else min(int(box[1]), max(0, h - th))
        draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=color)
        draw.text((x + 2 - left, y + 1 - top), str(text), fill=_text_color(color), font=font)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def shown_instances(scores: torch.Tensor | None, score_thresh: float, top_k: int = 0, count: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which instances :func:`draw_instances` draws: ``(confident, weak)`` boolean masks.

    ``confident``: scoring >= ``score_thresh`` (all of them without scores); ``weak``: when fewer
    than ``top_k`` are confident, the best-scoring others, up to ``top_k`` in all.
    """
    if scores is None:
        return torch.ones(count or 0, dtype=torch.bool), torch.zeros(count or 0, dtype=torch.bool)
    scores = torch.as_tensor(scores).detach().cpu().float().reshape(-1)
    keep = scores >= score_thresh
    weak = torch.zeros_like(keep)
    missing = top_k - int(keep.sum())
    if missing > 0:
        order = torch.argsort(scores, descending=True, stable=True)
        weak[order[~keep[order]][:missing]] = True
    return keep, weak


def instance_palette(num_classes: int) -> torch.Tensor:
    """Colours of the instance drawings and their legends: the VOC colour map shifted by one (no black)."""
    return color_palette(num_classes + 1)[1:]


def side_by_side(images: Sequence, titles: Sequence[str] | None = None, gap: int = 4) -> torch.Tensor:
    """Put images next to each other (e.g. image, prediction, ground truth) with titles.

    Images of different heights are top-aligned on a white background. Each title is written
    above its image in the largest font (12 down to 8 pixels) at which it fits the image's
    width, broken at spaces into several lines where needed (the title band grows), so titles
    of small images are not cut off.

    Returns:
        uint8 ``3 x H x W`` tensor of the whole panel.
    """
    imgs = [to_uint8(im) for im in images]
    if not imgs:
        raise ValueError("side_by_side needs at least one image")
    if titles is not None and len(titles) != len(imgs):
        raise ValueError(f"got {len(titles)} titles for {len(imgs)} images")
    texts = [_fit_text(str(t), max(im.shape[2] - 2, 1)) for im, t in zip(imgs, titles)] if titles else []
    title_h = max(16, *(1 + line_h * len(lines) for _, lines, line_h in texts)) if texts else 0
    h = max(im.shape[1] for im in imgs) + title_h
    w = sum(im.shape[2] for im in imgs) + gap * (len(imgs) - 1)
    canvas = torch.full((3, h, w), 255, dtype=torch.uint8)
    x = 0
    for im in imgs:
        canvas[:, title_h : title_h + im.shape[1], x : x + im.shape[2]] = im
        x += im.shape[2] + gap
    if texts:
        pil = Image.fromarray(canvas.permute(1, 2, 0).numpy())
        draw, x = ImageDraw.Draw(pil), 0
        for im, (font, lines, line_h) in zip(imgs, texts):
            for i, line in enumerate(lines):
                draw.text((x + 2, 1 + i * line_h), line, fill=(0, 0, 0), font=font)
            x += im.shape[2] + gap
        canvas = to_uint8(pil)
    return canvas


def save_image(image, path: str | os.PathLike) -> None:
    """Write an image (tensor, PIL, numpy; float in [0, 1] or uint8) to ``path`` (PNG, JPEG...)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(path)


def save_mask(mask: torch.Tensor, path: str | os.PathLike, palette: torch.Tensor | Sequence | None = None) -> None:
    """Write an int label mask ``H x W`` as a palettised PNG: pixel values are the labels.

    Read it back with ``np.array(Image.open(path))``; viewers show the palette colours.
    """
    mask = torch.as_tensor(mask).detach().cpu()
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2:
        raise ValueError(f"mask must be H x W, got {tuple(mask.shape)}")
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise ValueError("palettised PNG masks hold labels 0..255; save larger label sets as .npy instead")
    arr = np.ascontiguousarray(mask.to(torch.uint8).numpy())
    pil = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    pal = color_palette(256) if palette is None else torch.as_tensor(palette, dtype=torch.uint8).reshape(-1, 3)
    pil.putpalette(pal.flatten().tolist())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pil.save(path)


def _jitter(color: tuple[int, int, int], seed: int) -> tuple[int, int, int]:
    """A colour near ``color``, the same for the same ``seed``: tells instances of one class apart."""
    g = torch.Generator().manual_seed(seed)
    step = torch.rand(3, generator=g) * 2 - 1
    step = step / step.norm().clamp(min=1e-6) * 90
    return tuple(int(v) for v in (torch.tensor(color, dtype=torch.float32) + step).clamp(0, 255))


def draw_panoptic(
    image,
    segments: torch.Tensor,
    segments_info: Sequence[dict],
    class_names: Sequence[str] | None = None,
    alpha: float = 0.6,
    legend: bool = True,
    palette: torch.Tensor | Sequence | None = None,
) -> torch.Tensor:
    """Draw panoptic segments: stuff coloured per class, each thing in its own shade of its class colour
    with a box and ``"name 0.93"``, void left as it is, and a legend of the classes present.

    Args:
        image: the image (see the module docstring), ``H x W``.
        segments: ``H x W`` segment ids (0: void).
        segments_info: one dict per segment: ``id``, ``category`` (0-based), ``is_thing``, and
            optional ``score`` and ``iscrowd`` (crowd regions are labelled ``"name (crowd)"``).
        class_names: a name per category (the legend needs them; the label index otherwise).
        alpha: opacity of the segment colours.
        legend: append the legend panel on the right (when ``class_names`` are given).
        palette: colours per category (the VOC colour map shifted by one, as for instances).

    Returns:
        uint8 ``3 x H x W`` (``3 x H x (W + legend width)`` with a legend).
    """
    img = to_uint8(image)
    seg = torch.as_tensor(segments).detach().cpu().long()
    if tuple(seg.shape) != tuple(img.shape[-2:]):
        raise ValueError(f"segments must be H x W = {tuple(img.shape[-2:])} like the image, got {tuple(seg.shape)}")
    info = [s for s in segments_info if bool((seg == int(s["id"])).any())]
    n_cls = max([len(class_names) if class_names else 0] + [int(s["category"]) + 1 for s in info])
    colors = _colors(color_palette(n_cls + 1)[1:] if palette is None else palette, n_cls)
    out = img
    if info:
        masks = torch.stack([seg == int(s["id"]) for s in info])  # (S, H, W)
        seg_colors = [_jitter(colors[int(s["category"])], int(s["id"])) if s.get("is_thing") else
                      colors[int(s["category"])] for s in info]
        out = draw_segmentation_masks(out, masks, alpha=alpha, colors=seg_colors)
        things = [i for i, s in enumerate(info) if s.get("is_thing")]
        if things:
            boxes = masks_to_boxes(masks[things])
            boxes[:, 2:] += 1  # pixel extents
            names = []
            for i in things:
                s = info[i]
                name = class_names[int(s["category"])] if class_names else str(int(s["category"]))
                if s.get("iscrowd"):
                    name += " (crowd)"
                elif s.get("score") is not None:
                    name += f" {float(s['score']):.2f}"
                names.append(name)
            out = draw_bounding_boxes(out, boxes, labels=names, colors=[seg_colors[i] for i in things], width=1)
    if legend and class_names:
        present = sorted({int(s["category"]) for s in info})
        panel = draw_legend(class_names, colors, height=out.shape[1], classes=present)
        out = torch.cat([out, panel[:, : out.shape[1]]], dim=2)
    return out
