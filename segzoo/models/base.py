"""What every segzoo model shares: the :class:`Model` base (task, classes, normalisation,
input checks) and the semantic forward (:class:`SegmentationModel`).

Forward contract (DESIGN.md): float RGB images in [0, 1]; normalisation happens inside
the model with the ``pixel_mean``/``pixel_std`` buffers; ``model(images)`` returns
predictions and ``model(images, targets)`` returns a dict of losses with ``loss`` the
weighted total, whatever ``model.training`` is.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segzoo.layers.tracing import is_tracing
from segzoo.losses import class_weight_tensor, cross_entropy, dice_loss, ohem_cross_entropy, parse_loss, weighted_losses
from segzoo.losses.multilabel import sigmoid_bce_loss, sigmoid_dice_loss
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD, LABEL_MODES

_NOT_A_TENSOR_HINT = (
    "segzoo models take float torch tensors in [0, 1], N x 3 x H x W (or a list of 3 x H x W); "
    "for an H x W x 3 uint8 array use torch.from_numpy(img).permute(2, 0, 1).float() / 255, or "
    "segzoo.predict(model, path_or_array), which reads and converts images for you"
)


def refuse_non_tensors(images: Any) -> None:
    """Raise a TypeError for numpy arrays, PIL images and other non-tensor inputs."""
    items = images if isinstance(images, (list, tuple)) else [images]
    for i, im in enumerate(items):
        if not isinstance(im, torch.Tensor):
            what = "images" if items is not images else f"images[{i}]"
            kind = "a numpy array" if isinstance(im, np.ndarray) else f"a {type(im).__name__}"
            raise TypeError(f"{what} is {kind}; {_NOT_A_TENSOR_HINT}")


def check_num_classes(num_classes: Any, counts: str) -> int:
    """``num_classes`` as a Python int >= 1 (numpy integers are accepted; bools are not)."""
    if isinstance(num_classes, (bool, np.bool_)):
        raise ValueError(f"num_classes must be a positive int ({counts}), got {num_classes!r}")
    try:
        value = operator.index(num_classes)
    except TypeError:
        value = None
    if value is None or value < 1:
        raise ValueError(f"num_classes must be a positive int ({counts}), got {num_classes!r}")
    return int(value)


def check_image_tensor(x: torch.Tensor, what: str = "images", values: bool = True) -> None:
    """Raise a ValueError for images that cannot be used; warn once for values out of [0, 1].

    The dtype, channel and size checks are free. ``values=True`` also checks the values
    (:func:`check_image_values`), which costs one device-to-host sync.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or a list of them, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{what} have dtype {x.dtype}; segzoo models take float images in [0, 1]: "
            "use torchvision.transforms.v2.functional.to_dtype(img, torch.float32, scale=True) "
            "or img.float() / 255"
        )
    if x.shape[-3] != 3:
        raise ValueError(
            f"{what} must have 3 (RGB) channels in dimension -3, got shape {tuple(x.shape)}; "
            "convert grey images with img.expand(3, H, W) and drop alpha channels"
        )
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{what} have an empty spatial size {tuple(x.shape[-2:])}")
    if values:
        check_image_values([x], [what])


def check_image_values(images: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    """NaN/inf images raise a ValueError; values outside [0, 1] warn once per process.

    One ``aminmax`` per tensor and a single host sync for all of them; skipped under
    ``torch.compile`` / ``torch.export``. Models run it when ``model.check_inputs`` is
    True (the default); set it to False to take the sync off the inference path.
    """
    if is_tracing():
        return
    pairs = [(x, n) for x, n in zip(images, names) if x.numel()]
    if not pairs:
        return
    stats = torch.stack([torch.stack(torch.aminmax(x.detach())).float() for x, _ in pairs]).tolist()
    for (lo, hi), (_, what) in zip(stats, pairs):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{what} contain NaN or inf values; check the data loading and transforms")
        if (lo < -1e-3 or hi > 1 + 1e-3) and not _RANGE_WARNED[0]:
            _RANGE_WARNED[0] = True
            warnings.warn(
                f"{what} have values in [{lo:.3g}, {hi:.3g}] but segzoo models expect [0, 1] and "
                "normalise internally; do not normalise or scale to 255 beforehand",
                stacklevel=4,
            )


_RANGE_WARNED = [False]


def _crop(t: torch.Tensor, h: int, w: int, exporting: bool = False) -> torch.Tensor:
    """The top-left ``h x w`` of ``t``; a negative pad when exporting, which, unlike a slice,
    leaves no guard on dynamic sizes."""
    if exporting:
        return F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]))
    return t[..., :h, :w]


class Model(nn.Module):
    """Base of every segzoo model: the task, the class count, input normalisation and checks.

    Class attributes read by the rest of segzoo (never a model's name):

    - ``task``: one of :data:`segzoo.spec.TASKS`; ``model.spec.task`` is copied from it.
    - ``class_layers``: module-name prefixes of the layers whose shape depends on
      ``num_classes`` (re-initialised when a checkpoint has another class count).
    - ``size_divisibility``: inputs are padded to a multiple of this inside the model.
    - ``min_input_size``: and to at least this many pixels per side (1: no minimum).
    - ``check_inputs``: check image values (NaN/inf raise, values outside [0, 1] warn) at one
      host sync per call; set it to False on a deployed model.

    Inputs of any float dtype are cast to the model's dtype (that of its ``pixel_mean``
    buffer: float32 unless the model was converted with ``.half()``/``.double()``).
    """

    task: str = ""
    class_layers: tuple[str, ...] = ()
    size_divisibility: int = 1
    min_input_size: int = 1
    check_inputs: bool = True
    # what num_classes counts, for messages
    counts: str = "every label including background"

    def __init__(
        self,
        num_classes: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes, self.counts)
        if len(mean) != 3 or len(std) != 3 or min(float(v) for v in std) <= 0:
            raise ValueError(f"mean and std need 3 values (R, G, B) and std > 0, got mean={mean}, std={std}")
        self.input_mean = tuple(float(v) for v in mean)  # recorded in model.spec
        self.input_std = tuple(float(v) for v in std)
        self.register_buffer("pixel_mean", torch.tensor(self.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.input_std).view(1, 3, 1, 1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are cast to (the model's floating dtype)."""
        return self.pixel_mean.dtype

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` in the model's dtype: a new tensor (the division in place on the difference)."""
        x = x.to(self.dtype)
        return torch.sub(x, self.pixel_mean).div_(self.pixel_std)

    def set_grad_checkpointing(self, enable: bool = True) -> Model:
        """Recompute the backbone's activations in backward instead of keeping them (as timm's
        ``model.set_grad_checkpointing()``): less memory for about one more backbone forward
        per training step. Raises a ValueError when the backbone does not support it."""
        backbone = getattr(self, "backbone", None)
        if not callable(getattr(backbone, "set_grad_checkpointing", None)):
            if not enable:
                return self
            name = self.spec.name if hasattr(self, "spec") else type(self).__name__
            raise ValueError(f"{name} has no backbone that supports gradient checkpointing; set "
                             "train.grad_checkpointing=false")
        backbone.set_grad_checkpointing(enable)
        return self


class SegmentationModel(Model):
    """Base class of semantic segmentation models.

    Input: ``N x 3 x H x W`` float images in [0, 1] (or a list of same-size ``3 x H x W``).
    Output: logits ``N x num_classes x H x W`` at input size; with ``targets`` (int64
    ``N x H x W``, ``ignore_index`` for unlabelled pixels) a dict of losses:
    ``loss_ce``, ``loss_aux`` when there is an auxiliary head, and their weighted sum ``loss``.

    Subclasses implement :meth:`forward_logits`, returning the main logits and optionally
    auxiliary logits at any resolution; this class pads the input to
    ``size_divisibility``, upsamples bilinearly to the input size and crops back. An empty
    batch (``0 x 3 x H x W``) gives empty logits ``0 x C x H x W`` (an empty list:
    ``0 x C x 0 x 0``). Class attributes as in :class:`Model`.

    Loss options (recorded in ``model.spec``): ``class_weights`` (one per class) weight the
    cross-entropies (:func:`segzoo.losses.cross_entropy`, ``F.cross_entropy``'s weighted mean;
    ``segzoo.losses.CITYSCAPES_CLASS_WEIGHTS`` are the official HRNet ones); ``ohem_thresh``
    turns the main loss into OHEM cross-entropy (:func:`segzoo.losses.ohem_cross_entropy`,
    keeping at least ``ohem_min_kept`` pixels per batch); the auxiliary loss stays a
    cross-entropy, as in the official HRNet-OCR code. ``loss`` replaces the main loss with
    named, weighted terms (:func:`segzoo.losses.parse_loss`, e.g.
    ``[{"name": "lovasz"}, {"name": "dice", "weight": 0.5}]``), returned as ``loss_<name>``;
    it excludes ``dice_weight`` and ``ohem_thresh`` (give ``dice`` or ``ohem`` terms instead).

    ``label_mode`` (:data:`segzoo.spec.LABEL_MODES`, smp's loss ``mode``) says how the logits are read:
    ``multiclass`` (one softmax over ``num_classes`` labels, background included; int64 ``N x H x W``
    targets), ``binary`` (``num_classes=1``: one logit, a sigmoid and a threshold; 0/1 ``N x H x W``
    targets) or ``multilabel`` (one sigmoid per class, no background channel: a pixel may carry several
    labels or none; multi-hot ``N x C x H x W`` targets, ``ignore_index`` where unlabelled). The sigmoid
    modes train on binary cross-entropy (``loss_bce``; :func:`segzoo.losses.multilabel.sigmoid_bce_loss`)
    plus ``dice_weight`` times a sigmoid soft Dice (``loss_dice``); ``class_weights`` weight the classes;
    ``ohem_thresh`` and ``loss`` (softmax losses) are refused there.
    """

    task = "semantic"

    def __init__(
        self,
        num_classes: int,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
        aux_weight: float = 0.0,
        dice_weight: float = 0.0,
        class_weights: Sequence[float] | None = None,
        ohem_thresh: float | None = None,
        ohem_min_kept: int = 100_000,
        loss: Sequence[Any] | str | None = None,
        label_mode: str = "multiclass",
    ) -> None:
        super().__init__(num_classes, mean, std)
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
        if label_mode == "binary" and self.num_classes != 1:
            raise ValueError(f"label_mode=binary models have one output (num_classes=1: the foreground logit), got "
                             f"num_classes={self.num_classes}; set num_classes=1, or use label_mode=multiclass with "
                             "background counted")
        if label_mode != "multiclass" and (loss is not None or ohem_thresh is not None):
            raise ValueError(f"label_mode={label_mode} trains on sigmoid BCE (+ dice_weight x sigmoid Dice); loss and "
                             "ohem_thresh choose softmax losses: remove them or use label_mode=multiclass")
        self.label_mode = label_mode
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0 (0 turns the Dice loss off), got {dice_weight}")
        self.dice_weight = float(dice_weight)
        weights = None if class_weights is None else class_weight_tensor(list(class_weights), self.num_classes)
        self.register_buffer("class_weights", weights, persistent=False)  # follows .to(device)
        if ohem_thresh is not None and not 0 < ohem_thresh <= 1:
            raise ValueError(f"ohem_thresh must be in (0, 1] (None turns OHEM off), got {ohem_thresh}")
        if int(ohem_min_kept) < 1:
            raise ValueError(f"ohem_min_kept must be >= 1, got {ohem_min_kept}")
        self.ohem_thresh = None if ohem_thresh is None else float(ohem_thresh)
        self.ohem_min_kept = int(ohem_min_kept)
        if loss is not None and (dice_weight or ohem_thresh is not None):
            raise ValueError("loss replaces dice_weight and ohem_thresh; add {name: dice, weight: W} or "
                             "{name: ohem, thresh: T} to loss instead")
        self.loss_terms = () if loss is None else parse_loss(loss, self.num_classes)

    # ------------------------------------------------------------------ subclass API
    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised, padded images -> (logits, aux logits or None) at any resolution.

        ``with_aux`` is True when losses will be computed; the auxiliary head is skipped
        otherwise.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def stack_images(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        refuse_non_tensors(images)
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                return torch.zeros(0, 3, 0, 0, dtype=self.dtype, device=self.pixel_mean.device)
            sizes = {tuple(im.shape) for im in images}
            if len(sizes) > 1:
                raise ValueError(
                    f"semantic models take a batch of same-size images, got sizes {sorted(sizes)}; "
                    "resize or pad them in the data transforms (e.g. transforms with pad_to), "
                    "or run them one at a time"
                )
            images = torch.stack(list(images))
        if images.dim() == 3:
            raise ValueError(
                f"images must be N x 3 x H x W, got shape {tuple(images.shape)}; "
                "add a batch dimension with images[None]"
            )
        if images.dim() != 4:
            raise ValueError(f"images must be N x 3 x H x W, got shape {tuple(images.shape)}")
        check_image_tensor(images, values=self.check_inputs)  # an empty batch has no values to check
        return images

    def forward(
        self, images: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        x = self.stack_images(images)
        h, w = x.shape[-2:]
        if x.shape[0] == 0:
            if targets is not None:
                raise ValueError("got an empty batch with targets: losses need at least one image")
            return x.new_zeros(0, self.num_classes, h, w, dtype=self.dtype)
        x = self.normalize(x)
        d = self.size_divisibility
        # under torch.export with dynamic sizes, padding and resizing run unconditionally (no guard
        # on the input size; both are exact no-ops when nothing is to be done)
        hp, wp = h + (-h) % d, w + (-w) % d
        exporting = torch.compiler.is_exporting()
        if self.min_input_size > 1 and not exporting:  # exported programs declare their own minimum size
            hp, wp = max(hp, self.min_input_size), max(wp, self.min_input_size)
        if exporting or hp != h or wp != w:
            x = F.pad(x, (0, wp - w, 0, hp - h))
        out, aux = self.forward_logits(x, with_aux=targets is not None)
        out = _crop(self._resize(out, hp, wp, exporting), h, w, exporting)
        if targets is None:
            return out
        if aux is not None:
            aux = _crop(self._resize(aux, hp, wp, exporting), h, w, exporting)
        return self.losses(out, aux, targets)

    @staticmethod
    def _resize(t: torch.Tensor, h: int, w: int, always: bool = False) -> torch.Tensor:
        if not always and t.shape[-2:] == (h, w):
            return t
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)

    def check_multi_hot(self, targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid-mode targets: multi-hot ``N x C x H x W`` (0, 1 or ``ignore_index``), or for a binary model a
        0/1 label map ``N x H x W``; anything else raises a ValueError saying what to pass."""
        if isinstance(targets, (list, tuple)):
            targets = torch.stack(list(targets))
        if not isinstance(targets, torch.Tensor) or targets.is_floating_point():
            raise ValueError(f"label_mode={self.label_mode} targets must be integer multi-hot masks N x C x H x W "
                             f"(0/1, {self.ignore_index} unlabelled), got {getattr(targets, 'dtype', type(targets))}")
        n, c, h, w = logits.shape
        if targets.dim() == 3 and c == 1:
            targets = targets[:, None]
        if tuple(targets.shape) != (n, c, h, w):
            raise ValueError(f"label_mode={self.label_mode} targets have shape {tuple(targets.shape)} but the model "
                             f"gives {(n, c, h, w)}: one 0/1 mask per class (C x H x W per image; a multi-label data "
                             "reader such as data.type: mask_folders gives them)")
        if not is_tracing():
            bad = ((targets != 0) & (targets != 1) & (targets != self.ignore_index)).any()
            if bool(bad):
                found = targets[(targets != 0) & (targets != 1) & (targets != self.ignore_index)][0].item()
                raise ValueError(f"label_mode={self.label_mode} target has value {found}; masks hold 0, 1 or "
                                 f"ignore_index={self.ignore_index} (a 0/255 mask? map 255 to 1)")
        return targets

    def check_targets(self, targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if isinstance(targets, (list, tuple)):
            targets = torch.stack(list(targets))
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"semantic targets must be an int64 N x H x W tensor, got {type(targets)}")
        if targets.is_floating_point():
            raise ValueError(
                f"semantic targets have dtype {targets.dtype}; they must hold integer class "
                "indices (int64 N x H x W), not one-hot or probabilities"
            )
        n, _, h, w = logits.shape
        if targets.dim() == 4 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if tuple(targets.shape) != (n, h, w):
            raise ValueError(
                f"targets have shape {tuple(targets.shape)} but the images give {(n, h, w)}; "
                "masks must be N x H x W at the image size (apply the same transforms to both)"
            )
        targets = targets.long()
        if not is_tracing():
            valid = targets != self.ignore_index
            big = torch.iinfo(torch.int64).max
            lo = torch.where(valid, targets, big).min()  # ignored pixels left out
            hi = torch.where(valid, targets, -big).max()
            any_valid, lo, hi = torch.stack([valid.any().long(), lo, hi]).tolist()  # one host sync
            if any_valid:
                if lo < 0 or hi >= self.num_classes:
                    bad = hi if hi >= self.num_classes else lo
                    hint = (
                        " (a 0/255 binary mask? map 255 to 1 with MaskFolder(binary=True))"
                        if bad == 255 or hi == 255 else ""
                    )
                    raise ValueError(
                        f"target has value {bad} but num_classes={self.num_classes} (labels must "
                        f"be in [0, {self.num_classes - 1}] or ignore_index={self.ignore_index})"
                        f"{hint}; set num_classes or ignore_index"
                    )
        return targets

    def losses(
        self, out: torch.Tensor, aux: torch.Tensor | None, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if self.label_mode != "multiclass":
            return self.sigmoid_losses(out, aux, targets)
        targets = self.check_targets(targets, out)
        w = self.class_weights
        if self.loss_terms:
            losses, total = weighted_losses(self.loss_terms, out, targets, self.ignore_index, w)
        else:
            if self.ohem_thresh is not None:
                loss_ce = ohem_cross_entropy(out, targets, self.ohem_thresh, self.ohem_min_kept, self.ignore_index, w)
            else:
                loss_ce = cross_entropy(out, targets, self.ignore_index, weight=w)
            losses, total = {"loss_ce": loss_ce}, loss_ce
            if self.dice_weight:
                losses["loss_dice"] = dice_loss(out, targets, self.ignore_index)
                total = total + self.dice_weight * losses["loss_dice"]
        if aux is not None:
            loss_aux = cross_entropy(aux, targets, self.ignore_index, weight=w)
            losses["loss_aux"] = loss_aux
            total = total + self.aux_weight * loss_aux
        losses["loss"] = total
        return losses

    def sigmoid_losses(self, out: torch.Tensor, aux: torch.Tensor | None,
                       targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The losses of the ``binary`` and ``multilabel`` modes: BCE, ``dice_weight`` x Dice, the auxiliary BCE."""
        targets = self.check_multi_hot(targets, out)
        w, ii = self.class_weights, self.ignore_index
        losses = {"loss_bce": sigmoid_bce_loss(out, targets, ii, weight=w)}
        total = losses["loss_bce"]
        if self.dice_weight:
            losses["loss_dice"] = sigmoid_dice_loss(out, targets, ii, weight=w)
            total = total + self.dice_weight * losses["loss_dice"]
        if aux is not None:
            losses["loss_aux"] = sigmoid_bce_loss(aux, targets, ii, weight=w)
            total = total + self.aux_weight * losses["loss_aux"]
        losses["loss"] = total
        return losses
