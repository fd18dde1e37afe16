"""Losses chosen by name, weighted and summed: what ``model.loss`` in a config describes.

``model.loss: [{name: lovasz}, {name: dice, weight: 0.5}]`` trains on
``1.0 * lovasz_softmax + 0.5 * dice_loss``; a term's other keys are its function's keyword
arguments (``{name: tversky, alpha: 0.3, beta: 0.7}``) and ``class_weights`` its own class
weights (default: the model's ``class_weights``). :func:`parse_loss` checks every name, key and
type once, when the model is built (and when a config is read), and the losses the model returns
are named ``loss_<name>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from segzoo.losses.core import class_weight_tensor, cross_entropy, dice_loss, focal_loss, ohem_cross_entropy
from segzoo.losses.lovasz import lovasz_hinge, lovasz_softmax
from segzoo.losses.region import boundary_dice_loss, focal_tversky_loss, soft_bce_loss, tversky_loss

# name -> function(logits, targets, ignore_index=..., weight=..., **options)
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ce": cross_entropy,
    "ohem": ohem_cross_entropy,
    "focal": focal_loss,
    "dice": dice_loss,
    "lovasz": lovasz_softmax,
    "lovasz_hinge": lovasz_hinge,
    "tversky": tversky_loss,
    "focal_tversky": focal_tversky_loss,
    "boundary_dice": boundary_dice_loss,
    "bce": soft_bce_loss,
}
ALIASES = {"cross_entropy": "ce", "lovasz_softmax": "lovasz", "soft_bce": "bce", "ohem_ce": "ohem"}
_FIXED = ("logits", "targets", "ignore_index", "weight")  # given by the model, not by the term


def loss_options(name: str) -> dict[str, Any]:
    """The keyword options of loss ``name`` and their defaults."""
    params = inspect.signature(LOSSES[name]).parameters
    return {k: p.default for k, p in params.items() if k not in _FIXED}


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One weighted loss of a sum: ``weight * LOSSES[name](logits, targets, **options)``."""

    name: str
    weight: float = 1.0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    class_weights: tuple[float, ...] | None = None

    @property
    def key(self) -> str:
        return f"loss_{self.name}"

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                 class_weights: torch.Tensor | None = None) -> torch.Tensor:
        w = class_weights if self.class_weights is None else class_weight_tensor(
            self.class_weights, logits.shape[1], logits.device)
        return LOSSES[self.name](logits, targets, ignore_index=ignore_index, weight=w, **self.options)


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _term(entry: Any, where: str) -> LossTerm:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a loss name or a mapping like {{name: dice, weight: 0.5}}, got {entry!r}")
    entry = dict(entry)
    name = entry.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"{where} has no name; give one of {', '.join(LOSSES)}")
    name = ALIASES.get(name, name)
    if name not in LOSSES:
        close = difflib.get_close_matches(name, [*LOSSES, *ALIASES], n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: unknown loss {name!r}{hint} (losses: {', '.join(LOSSES)})")
    weight = entry.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 or weight == float("inf"):
        raise ValueError(f"{where}: weight of {name} must be a finite number >= 0, got {weight!r}")
    class_weights = entry.pop("class_weights", None)
    if class_weights is not None:
        if not isinstance(class_weights, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in class_weights):
            raise ValueError(f"{where}: class_weights of {name} must be a list of numbers, got {class_weights!r}")
        class_weights = tuple(float(v) for v in class_weights)
    allowed = loss_options(name)
    for key, value in entry.items():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            shown = ", ".join(["weight", "class_weights", *allowed])
            raise ValueError(f"{where}: {name} has no option {key!r}{hint} (its options: {shown})")
        if not _same_type(value, allowed[key]):
            raise ValueError(f"{where}: {name} option {key!r} must be like its default {allowed[key]!r}, "
                             f"got {value!r}")
    return LossTerm(name, float(weight), dict(entry), class_weights)


def parse_loss(spec: Any, num_classes: int | None = None, where: str = "loss") -> tuple[LossTerm, ...]:
    """Loss terms from a config value: a name, a mapping, or a list of names and mappings.

    With ``num_classes`` every term also runs once on a tiny batch, so an option out of its
    range (``alpha: -1``) or class weights of the wrong length fail now rather than at the
    first training step.

    Raises:
        ValueError: naming the entry (``loss[1]``), the bad key and what it accepts.
    """
    entries = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not entries:
        raise ValueError(f"{where} is empty; give at least one loss, e.g. [{{name: ce}}]")
    terms = tuple(_term(e, f"{where}[{i}]" if len(entries) > 1 or isinstance(spec, (list, tuple)) else where)
                  for i, e in enumerate(entries))
    names = [t.name for t in terms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where} names {', '.join(dup)} more than once; give each loss once (its options in one "
                         "entry)")
    if num_classes is not None:
        logits = torch.zeros(1, num_classes, 2, 2)
        targets = torch.zeros(1, 2, 2, dtype=torch.long)
        for i, t in enumerate(terms):
            try:
                t(logits, targets, ignore_index=255)
            except ValueError as e:
                raise ValueError(f"{where}[{i}] ({t.name}): {e}") from None
    return terms


def weighted_losses(terms: Sequence[LossTerm], logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                    class_weights: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(``{"loss_<name>": value}``, the weighted sum) of the terms on one batch."""
    losses = {t.key: t(logits, targets, ignore_index, class_weights) for t in terms}
    total = sum(t.weight * losses[t.key] for t in terms)
    return losses, total
