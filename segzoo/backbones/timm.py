"""timm feature extractors behind segzoo's backbone contract."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Sequence

import timm
import torch

from segzoo.backbones.base import Backbone
from segzoo.backbones.layouts import to_timm


def is_timm_model(name: str) -> bool:
    return name in timm.list_models()


def closest_timm_names(name: str, n: int = 5) -> list[str]:
    """The timm model names closest to ``name`` (difflib over ``timm.list_models()``)."""
    return difflib.get_close_matches(name, timm.list_models(), n=n, cutoff=0.6)


class TimmBackbone(Backbone):
    """A timm model created with ``features_only=True``.

    Input: ``N x 3 x H x W`` normalised images. Output: a list of feature maps, one per
    entry of ``out_indices``, with ``self.channels[i]`` channels at stride
    ``self.strides[i]``. Decoders read ``channels`` and ``strides`` and never the
    backbone's name.

    Args:
        name: any timm model that supports ``features_only`` (``timm.list_models()``).
        out_indices: which feature levels to return (timm's indices); all by default.
        output_stride: 32 (no dilation), 16 or 8: the last stages use dilated
            convolutions instead of striding, as DeepLab and PSPNet need.
        weights: a local timm-format weights file (``.safetensors`` or ``.pth``) holding
            the state dict of ``timm.create_model(name)`` (classifier keys are ignored), or
            a timm tag: ``"imagenet"`` or ``"<name>.<tag>"`` (see :meth:`load_weights`).
        frozen_bn: replace BatchNorm with FrozenBatchNorm2d (statistics and affine fixed).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """

    kind = "timm backbone"
    weights_hint = "the file must hold the state dict of timm.create_model(name)"

    def __init__(
        self,
        name: str,
        out_indices: Sequence[int] | None = None,
        output_stride: int = 32,
        weights: str | os.PathLike | None = None,
        frozen_bn: bool = False,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if not is_timm_model(name):
            close = closest_timm_names(name)
            raise ValueError(
                f"unknown timm backbone {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                + " (timm.list_models() lists them; the model must support features_only)"
            )
        kwargs = dict(features_only=True, pretrained=False, **timm_kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        try:
            self.body = timm.create_model(name, **kwargs)
        except (TypeError, RuntimeError, AssertionError) as e:
            if output_stride != 32:
                raise ValueError(
                    f"timm backbone {name!r} cannot run at output_stride={output_stride} ({e}); "
                    "use output_stride=32 or a backbone that supports dilation (ResNet, "
                    "MobileNetV3, EfficientNet, ConvNeXt)"
                ) from e
            raise ValueError(f"timm backbone {name!r} does not support features_only: {e}") from e
        self.name = name
        self._timm_kwargs = dict(timm_kwargs)
        self.output_stride = output_stride
        self._channels: tuple[int, ...] = tuple(self.body.feature_info.channels())
        self._strides: tuple[int, ...] = tuple(self.body.feature_info.reduction())
        # Swin and other token models return N x H x W x C maps; the contract is N x C x H x W
        self.channels_last_maps = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        if weights is not None:
            self.load_weights(weights)
        if frozen_bn:
            self.freeze(bn=True, params=False)

    @property
    def channels(self) -> tuple[int, ...]:
        """timm's ``feature_info.channels()`` of the returned levels."""
        return self._channels

    @property
    def strides(self) -> tuple[int, ...]:
        """timm's ``feature_info.reduction()`` of the returned levels (dilated stages keep the stride before them)."""
        return self._strides

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.channels_last_maps:
            return [f.permute(0, 3, 1, 2) for f in self.body(x)]  # (N, H, W, C) -> (N, C, H, W)
        return list(self.body(x))

    def set_grad_checkpointing(self, enable: bool = True) -> TimmBackbone:
        """timm's ``set_grad_checkpointing`` on the feature extractor (or, for models whose
        features come from ``forward_intermediates``, on the model itself).

        timm recomputes each stage in backward (not the first or last); its recomputation
        folds the batch into BatchNorm running statistics a second time, as in timm.
        """
        target = self.body if hasattr(self.body, "set_grad_checkpointing") else getattr(self.body, "model", None)
        setter = getattr(target, "set_grad_checkpointing", None)
        if setter is None:
            return super().set_grad_checkpointing(enable)
        try:
            setter(enable)
        except (AssertionError, NotImplementedError, RuntimeError) as e:
            raise ValueError(f"timm backbone {self.name!r} does not support gradient checkpointing ({e}); set "
                             "train.grad_checkpointing=false") from e
        self.grad_checkpointing = bool(enable)
        return self

    def from_layout(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
        """torchvision classifier files (MobileNetV2, ResNet) mapped to timm's keys, by layout."""
        return to_timm(state, self.name)

    def timm_kwargs(self) -> dict:
        return dict(self._timm_kwargs)

    def weights_module(self) -> torch.nn.Module:
        return self.body

    def ignored_weight_keys(self, keys: Iterable[str]) -> set[str]:
        """The full timm model's keys that the features_only body lacks (its classifier)."""
        with torch.device("meta"):  # the whole classifier's keys, without allocating weights
            full = timm.create_model(self.name, pretrained=False, **self._timm_kwargs).state_dict()
        return set(full)

    def stage_prefixes(self) -> list[tuple[str, ...]]:
        """timm's feature levels (``act1``, ``layer1``... for a ResNet), as parameter prefixes of
        the features_only body (which renames ``a.b`` to ``a_b``)."""
        names = self.body.feature_info.module_name()
        return [("body." + n + ".", "body." + n.replace(".", "_") + ".") for n in names]
