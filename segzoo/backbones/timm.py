"""One backbone contract over timm: ``forward(x) -> list[Tensor]`` plus ``channels``/``strides``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn


class TimmBackbone(nn.Module):
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
            the state dict of ``timm.create_model(name)``; classifier keys are ignored.
        frozen_bn: replace BatchNorm with FrozenBatchNorm2d (statistics and affine fixed).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """

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
        if name not in timm.list_models():
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise ValueError(
                f"unknown timm backbone {name!r}" + (f"; similar: {', '.join(close)}" if close else "")
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
        self.channels: tuple[int, ...] = tuple(self.body.feature_info.channels())
        self.strides: tuple[int, ...] = tuple(self.body.feature_info.reduction())
        if weights is not None:
            self.load_timm_weights(weights)
        if frozen_bn:
            self.freeze(bn=True, params=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))

    def load_timm_weights(self, path: str | os.PathLike) -> None:
        """Load ``timm.create_model(name).state_dict()`` saved as safetensors or .pth."""
        from segzoo.checkpoint import CheckpointError, read_state_dict

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"backbone weights not found: {path}; pass a local timm weights file (segzoo "
                "never downloads weights)"
            )
        state = read_state_dict(path)
        own = self.body.state_dict()
        state = {k.removeprefix("module."): v for k, v in state.items()}
        with torch.device("meta"):  # the whole classifier's keys, without allocating weights
            full = set(timm.create_model(self.name, pretrained=False, **self._timm_kwargs).state_dict())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in full and k not in own]
        mismatched = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own if k in state and state[k].shape != own[k].shape
        ]
        if missing or mismatched or unexpected:
            raise CheckpointError(
                f"{path} does not fit timm backbone {self.name!r}: "
                + (f"missing {len(missing)} keys ({', '.join(missing[:8])})" if missing else "")
                + (f" mis-shaped: {'; '.join(mismatched[:8])}" if mismatched else "")
                + (f" unexpected {len(unexpected)} keys ({', '.join(unexpected[:8])})" if unexpected else "")
                + "; the file must hold the state dict of timm.create_model(name)"
            )
        self.body.load_state_dict({k: state[k] for k in own}, strict=True)

    def freeze(self, bn: bool = True, params: bool = True) -> TimmBackbone:
        """Stop training the backbone.

        Args:
            bn: replace BatchNorm layers with FrozenBatchNorm2d (fixed statistics).
            params: set ``requires_grad=False`` on every parameter.
        """
        if bn:
            from timm.layers import freeze_batch_norm_2d

            self.body = freeze_batch_norm_2d(self.body)
        if params:
            for p in self.body.parameters():
                p.requires_grad_(False)
        return self
