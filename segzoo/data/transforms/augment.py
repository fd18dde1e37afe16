"""The augmentations of the published recipes, as joint ``torchvision.transforms.v2`` transforms.

Each moves a :class:`~torchvision.tv_tensors.Image` together with its
:class:`~torchvision.tv_tensors.Mask` and :class:`~torchvision.tv_tensors.BoundingBoxes`
(geometric ones) or changes the image only (photometric ones); all randomness comes from
torch's generator, so ``torch.manual_seed`` makes them repeatable.

- :class:`RandomRescale`: mmsegmentation's ``RandomResize(ratio_range=...)`` / the official
  HRNet ``multi_scale_aug`` (a random factor relative to a reference size, aspect kept).
- :class:`SegRandomCrop`: mmsegmentation's ``RandomCrop`` with ``cat_max_ratio`` (the crop
  stays inside the image; pad afterwards with :class:`~segzoo.data.transforms.PadToSize`).
- :class:`ObjectCentredCrop`: a detection crop around a randomly chosen object (sliced training on
  huge images with small objects: most random crops of such an image hold no object).
- :class:`PhotoMetricDistortion`: mmsegmentation's photometric distortion.
- :class:`CenterAffine`: the official CenterNet ``ctdet`` scale-and-shift crop to a fixed size.
- :class:`PCALighting`: CenterNet's (AlexNet's) PCA lighting noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

# np.arange(0.6, 1.4, 0.1) of the official CenterNet (1.4 itself is excluded)
CENTERNET_SCALES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
# the official CenterNet's PCA of COCO pixel colours (BGR rows), used by its lighting noise
CENTERNET_EIGVAL = (0.2141788, 0.01817699, 0.00341571)
CENTERNET_EIGVEC_BGR = (
    (-0.58752847, -0.69563484, 0.41340352),
    (-0.5832747, 0.00994535, -0.81221408),
    (-0.56089297, 0.71832671, 0.41158938),
)


def pair(size: int | Sequence[int], what: str = "size") -> tuple[int, int]:
    """``size`` as ``(height, width)`` of positive ints."""
    out = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"{what} must be a positive int or [height, width], got {size!r}")
    return out


def _is_image(inpt: Any) -> bool:
    """Photometric transforms touch images (and a plain tensor standing for one), never masks or boxes."""
    return isinstance(inpt, torch.Tensor) and not isinstance(inpt, (tv_tensors.Mask, tv_tensors.BoundingBoxes))


def _rewrap(out: torch.Tensor, like: Any) -> Any:
    return tv_tensors.wrap(out, like=like) if isinstance(like, tv_tensors.TVTensor) else out


class RandomRescale(v2.Transform):
    """Resize by ``r * base`` with a random ratio ``r``, keeping the aspect ratio.

    ``base = min(max(size) / max(H, W), min(size) / min(H, W))`` fits the image into ``size``
    whatever its orientation (mmsegmentation's ``keep_ratio`` rule); with an int ``size`` it is
    ``size / max(H, W)``, the official HRNet's ``base_size``; with ``size=None`` it is 1
    (the image's own size). ``r`` is uniform in ``scale``, or, with ``step``, drawn from
    ``scale[0], scale[0] + step, ..., scale[1]`` (HRNet: 0.5, 0.6, ..., 2.1).

    Args:
        size: the reference size, int or ``(height, width)``, or None.
        scale: ``(min, max)`` ratio.
        step: draw ``r`` from a grid with this step instead of uniformly.
        antialias: antialias when downsampling images (masks use nearest).
    """

    def __init__(self, size: int | Sequence[int] | None, scale: Sequence[float] = (0.5, 2.0),
                 step: float | None = None, antialias: bool = True) -> None:
        super().__init__()
        self.size = None if size is None else pair(size)
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be [min, max] with 0 < min <= max, got {list(scale)}")
        self.scale = (lo, hi)
        if step is not None and step <= 0:
            raise ValueError(f"scale_step must be > 0, got {step}")
        count = int((hi - lo) / step + 1e-9) + 1 if step else 0
        self.choices = tuple(round(lo + i * step, 10) for i in range(count)) if step else None
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        if self.choices:
            r = self.choices[int(torch.randint(len(self.choices), ()))]
        else:
            lo, hi = self.scale
            r = lo + float(torch.rand(())) * (hi - lo)
        base = 1.0 if self.size is None else min(max(self.size) / max(h, w), min(self.size) / min(h, w))
        f = base * r
        return {"size": (max(1, int(h * f)), max(1, int(w * f))), "ratio": r}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.resize(inpt, list(params["size"]), antialias=self.antialias)


class SegRandomCrop(v2.Transform):
    """A random ``size`` crop inside the image (the whole side where the image is smaller).

    mmsegmentation's ``RandomCrop``: with ``cat_max_ratio < 1`` the crop is redrawn (up to
    ``tries`` times) while one class covers at least that share of its labelled pixels or it
    has fewer than two classes. Pad to ``size`` afterwards
    (:class:`~segzoo.data.transforms.PadToSize`: image 0, mask ``ignore_index``, bottom/right).
    """

    def __init__(self, size: int | Sequence[int], cat_max_ratio: float = 1.0, ignore_index: int = 255,
                 tries: int = 10) -> None:
        super().__init__()
        self.size = pair(size, "crop")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index
        self.tries = tries

    def _draw(self, h: int, w: int) -> tuple[int, int]:
        top = int(torch.randint(max(h - self.size[0], 0) + 1, ()))
        left = int(torch.randint(max(w - self.size[1], 0) + 1, ()))
        return top, left

    def _balanced(self, mask: torch.Tensor, top: int, left: int) -> bool:
        crop = mask[..., top:top + self.size[0], left:left + self.size[1]]
        counts = torch.unique(crop[crop != self.ignore_index], return_counts=True)[1]
        return counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        top, left = self._draw(h, w)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        if self.cat_max_ratio < 1 and mask is not None:
            for _ in range(self.tries):
                if self._balanced(mask, top, left):
                    break
                top, left = self._draw(h, w)
        return {"top": top, "left": left, "height": min(self.size[0], h), "width": min(self.size[1], w),
                "whole": h <= self.size[0] and w <= self.size[1]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["whole"]:
            return inpt
        return TF.crop(inpt, params["top"], params["left"], params["height"], params["width"])


class ObjectCentredCrop(v2.Transform):
    """A ``size`` crop (the whole side where the image is smaller) holding one object chosen at random.

    The crop's position is drawn uniformly among those that contain the chosen box (or, for a box
    larger than the crop, that the box covers), so objects do not always sit in the middle; without
    boxes it is a random crop. Pad to ``size`` afterwards (``v2.RandomCrop(size, pad_if_needed=True)``).
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = pair(size, "crop")

    @staticmethod
    def _start(lo: float, hi: float, crop: int, side: int) -> int:
        """A start in ``[0, side - crop]`` whose window holds ``[lo, hi]`` (or lies inside it when it is longer)."""
        a, b = (hi - crop, lo) if hi - lo <= crop else (lo, hi - crop)
        a, b = max(0, int(a + 0.999)), min(side - crop, int(b))
        if a > b:  # near the border: the closest valid start
            a = b = min(max(0, int(lo)), side - crop)
        return int(torch.randint(a, b + 1, ()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        boxes = next((x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes)), None)
        if boxes is not None and len(boxes):
            xyxy = TF.convert_bounding_box_format(boxes.as_subclass(torch.Tensor), old_format=boxes.format,
                                                  new_format=tv_tensors.BoundingBoxFormat.XYXY)
            x0, y0, x1, y1 = xyxy[int(torch.randint(len(xyxy), ()))].tolist()
            top, left = self._start(y0, y1, ch, h), self._start(x0, x1, cw, w)
        else:
            top, left = int(torch.randint(h - ch + 1, ())), int(torch.randint(w - cw + 1, ()))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.crop(inpt, params["top"], params["left"], params["height"], params["width"])


class PhotoMetricDistortion(v2.Transform):
    """mmsegmentation's ``PhotoMetricDistortion``, on RGB images in [0, 1] or uint8.

    In order, each with probability 0.5: brightness ``+ U(-delta, delta) / 255``; contrast
    ``* U(contrast)`` here or at the end (a fair coin); saturation: the HSV saturation
    ``* U(saturation)`` (clipped to 1); hue: the HSV hue shifted by ``randint(-hue_delta,
    hue_delta) / 180`` of a turn (OpenCV's 180-step hue). Values are clipped to the valid range
    after each step. Unlike ``v2.ColorJitter`` brightness adds and contrast scales around 0, as
    in mmsegmentation. The steps run in float32 (mmsegmentation rounds to uint8 after each);
    uint8 images come back as uint8. Masks and boxes pass unchanged.
    """

    def __init__(self, brightness_delta: float = 32, contrast: Sequence[float] = (0.5, 1.5),
                 saturation: Sequence[float] = (0.5, 1.5), hue_delta: int = 18, p: float = 0.5) -> None:
        super().__init__()
        self.brightness_delta = float(brightness_delta)
        self.contrast = tuple(float(c) for c in contrast)
        self.saturation = tuple(float(s) for s in saturation)
        if not 0 <= hue_delta <= 90:
            raise ValueError(f"hue_delta must be in [0, 90] (OpenCV hue steps of 2 degrees), got {hue_delta}")
        self.hue_delta = int(hue_delta)
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def coin() -> bool:
            return bool(torch.rand(()) < self.p)

        def uniform(lo: float, hi: float) -> float:
            return lo + float(torch.rand(())) * (hi - lo)

        d = self.brightness_delta
        return {
            "brightness": uniform(-d, d) / 255 if coin() else None,
            "contrast_first": coin(),
            "contrast": uniform(*self.contrast) if coin() else None,
            "saturation": uniform(*self.saturation) if coin() else None,
            "hue": int(torch.randint(-self.hue_delta, self.hue_delta, ())) if coin() and self.hue_delta else None,
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not _is_image(inpt):
            return inpt
        img = TF.to_dtype(inpt.as_subclass(torch.Tensor), torch.float32, scale=True)
        if params["brightness"] is not None:
            img = (img + params["brightness"]).clamp(0, 1)
        if params["contrast_first"] and params["contrast"] is not None:
            img = (img * params["contrast"]).clamp(0, 1)
        if params["saturation"] is not None:
            img = scale_saturation(img, params["saturation"])
        if params["hue"] is not None:
            img = TF.adjust_hue(img, params["hue"] / 180)
        if not params["contrast_first"] and params["contrast"] is not None:
            img = (img * params["contrast"]).clamp(0, 1)
        return _rewrap(TF.to_dtype(img, inpt.dtype, scale=True), inpt)


def scale_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply the HSV saturation of RGB ``img`` in [0, 1] by ``factor``, clipped to 1.

    With hue and value fixed every channel is ``V - S * V * f_c(H)``, so scaling ``S`` by ``k``
    moves each channel away from (or towards) the pixel's maximum by ``k``; ``k`` stops where
    ``S`` reaches 1 (the smallest channel at 0).
    """
    v = img.amax(-3, keepdim=True)
    spread = v - img.amin(-3, keepdim=True)  # S * V
    k = torch.where(spread > 0, (v / spread.clamp(min=1e-12)).clamp(max=factor), torch.zeros_like(v))
    return (v - (v - img) * k).clamp(0, 1)


class CenterAffine(v2.Transform):
    """The official CenterNet ``ctdet`` input crop: a square window of side ``s`` around a
    centre ``c``, resized to ``size`` (no rotation).

    Train (``random=True``): ``s = max(H, W) * choice(scales)`` and ``c`` uniform in the image
    less a border (128 px, halved until it fits, as the official ``_get_border``). Eval:
    ``c`` the image centre and ``s = max(H, W)`` (the whole image, letterboxed). Areas outside
    the image are filled with 0 (image and masks); boxes follow and are clamped and sanitised by
    the preset. The window is rounded to whole pixels (the official warps by the exact affine).
    """

    def __init__(self, size: int | Sequence[int] = 512, random: bool = True,
                 scales: Sequence[float] = CENTERNET_SCALES, border: int = 128, antialias: bool = True) -> None:
        super().__init__()
        self.size = pair(size)
        self.random = random
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"affine scales must be positive, got {list(scales)}")
        self.border = int(border)
        self.antialias = antialias

    @staticmethod
    def _border(border: int, size: int) -> int:
        i = 1
        while size - border // i <= border // i:
            i *= 2
        return border // i

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = float(max(h, w))
        cx, cy = w / 2, h / 2
        if self.random:
            s *= self.scales[int(torch.randint(len(self.scales), ()))]
            bw, bh = self._border(self.border, w), self._border(self.border, h)
            cx = int(torch.randint(bw, w - bw, ()))
            cy = int(torch.randint(bh, h - bh, ()))
        out_h, out_w = self.size
        win_w, win_h = s, s * out_h / out_w  # the official scales both axes by out_w / s
        return {"top": round(cy - win_h / 2), "left": round(cx - win_w / 2), "height": max(1, round(win_h)),
                "width": max(1, round(win_w)), "center": (cx, cy), "side": s}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.resized_crop(inpt, params["top"], params["left"], params["height"], params["width"],
                               list(self.size), antialias=self.antialias)


class PCALighting(v2.Transform):
    """AlexNet-style lighting noise as in the official CenterNet: add ``E (lambda * alpha)``
    with ``alpha ~ N(0, alphastd)`` per image to RGB values in [0, 1] (clipped).

    ``eigval``/``eigvec_bgr`` default to CenterNet's COCO colour PCA, whose rows are in BGR
    order (it reads images with OpenCV); they are applied to the RGB channels accordingly.
    """

    def __init__(self, alphastd: float = 0.1, eigval: Sequence[float] = CENTERNET_EIGVAL,
                 eigvec_bgr: Sequence[Sequence[float]] = CENTERNET_EIGVEC_BGR) -> None:
        super().__init__()
        if alphastd < 0:
            raise ValueError(f"pca_lighting must be >= 0, got {alphastd}")
        self.alphastd = float(alphastd)
        self.eigval = torch.tensor(eigval, dtype=torch.float32)
        self.eigvec_rgb = torch.tensor(eigvec_bgr, dtype=torch.float32).flip(0)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        alpha = torch.randn(3) * self.alphastd
        return {"shift": self.eigvec_rgb @ (self.eigval * alpha)}  # (3,) RGB

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not _is_image(inpt):
            return inpt
        img = TF.to_dtype(inpt.as_subclass(torch.Tensor), torch.float32, scale=True)
        img = (img + params["shift"].to(img.device)[:, None, None]).clamp(0, 1)
        return _rewrap(TF.to_dtype(img, inpt.dtype, scale=True), inpt)


__all__ = [
    "CENTERNET_SCALES", "CenterAffine", "PCALighting", "PhotoMetricDistortion", "RandomRescale", "SegRandomCrop",
    "scale_saturation",
]
