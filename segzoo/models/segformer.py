"""SegFormer (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021): the Mix Transformer encoder (:mod:`segzoo.backbones.mit`) and the
all-MLP decode head, or that head on any hierarchical timm body (``backbone="convnext_tiny"``).

Head, for the four maps ``F_i`` (``C_i`` channels at stride ``4 * 2^i``)::

    F_i' = Linear(C_i -> E)(F_i)              per pixel (a 1x1 conv), at the map's own stride
    F_i' = Upsample(F_i') to stride 4         bilinear, align_corners=False
    F    = Linear(4E -> E)(cat(F_4', F_3', F_2', F_1'))  -> BN -> ReLU     (no bias)
    logits = Linear(E -> classes)(Dropout(F))                              stride 4

``E`` is 256 for B0/B1 and 768 for B2-B5. The stride-4 logits are upsampled bilinearly to the
input size (:class:`~segzoo.models.base.SegmentationModel`), which is where Hugging Face's
``SegformerForSemanticSegmentation`` upsamples them for its loss; its ``logits`` output is the
stride-4 map (``forward_logits`` here).

The key maps of Hugging Face's layout (the published ``nvidia/segformer-*`` files and the
renamed layout of transformers 5: :func:`map_huggingface`) and of smp's ``Segformer``
(:func:`map_smp`, :func:`from_smp`) are beside the family.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones import BODIES, Backbone, MiT, TimmBackbone, make_backbone
from segzoo.backbones.mit import ARCHS as MIT_ARCHS
from segzoo.backbones.swin import pad_before_shift
from segzoo.data.formats.ade20k import ADE20K_CLASSES
from segzoo.hub.published import WeightsEntry, load_families, register_converter, register_weights
from segzoo.layers import ConvNormAct
from segzoo.layers.upsampled_conv import UpsampledConcatConv, conv_norm_affine
from segzoo.models.base import SegmentationModel
from segzoo.models.converters import HUGGINGFACE, SMP, KeyMap, convert_with, key_map_for, register_key_map
from segzoo.registry import create, entry_class, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD


def pyramid_backbone(name: str, weights: str | os.PathLike | None = None, **kwargs: Any) -> Backbone:
    """A body that returns four maps at strides 4-32: a segzoo body (MiT, HRNet) or the last four
    levels of a timm ``features_only`` model (a ResNet's ``layer1``-``layer4``; ConvNeXt; Swin,
    built with timm's ``dynamic_img_size`` so that any input size works, and ``always_partition``).
    ``kwargs`` go to MiT."""
    if name in BODIES:
        if kwargs:
            return MiT(name, weights=weights, **kwargs) if name.startswith("mit_") else make_backbone(name)
        return make_backbone(name, weights=weights)
    if kwargs:
        raise ValueError(f"{', '.join(kwargs)} only apply to MiT bodies (mit_b0 ... mit_b5), not {name!r}")
    if not timm.models.is_model(name):
        return make_backbone(name, weights=weights, levels=4)  # raises with the closest names
    # Swin: any input size (timm's dynamic_img_size) and shifted windows at every stage, also where a
    # stage is no larger than a window (always_partition), as the Swin segmentation code and Hugging
    # Face's SwinBackbone; other token models take what applies, convolutional ones neither
    # and the Swin code's window order (pad_before_shift: pad to whole windows, then shift)
    for extra in ({"dynamic_img_size": True, "always_partition": True}, {"dynamic_img_size": True}):
        try:
            body = TimmBackbone(name, out_indices=(-4, -3, -2, -1), weights=weights, **extra)
            pad_before_shift(body)
            return body
        except ValueError as e:
            if not any(k in str(e) for k in extra):
                raise
    return TimmBackbone(name, out_indices=(-4, -3, -2, -1), weights=weights)


class SegFormerHead(nn.Module):
    """The all-MLP decode head (see the module docstring).

    Input: four maps, finest first (``in_channels[i]`` channels). Output: logits at the
    finest map's size.

    Args:
        in_channels: channels of the four maps.
        num_classes: classes including background.
        embed_dim: the common width ``E`` (256 for B0/B1, 768 for B2-B5).
        dropout: dropout before the classifier (0.1).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, *, embed_dim: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = ConvNormAct(len(in_channels) * embed_dim, embed_dim, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

        self.folded: UpsampledConcatConv | None = None  # fold_for_inference: the head as one conv per map

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.folded is not None and not self.training:
            # contiguous logits, as UPerNet's: the full-size resize then needs no transposition afterwards
            return self.classifier(self.dropout(self.fuse[2](self.folded(feats[0], feats[1:])))).contiguous()
        size = feats[0].shape[-2:]
        up = [F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if i else p(f)
              for i, (p, f) in enumerate(zip(self.proj, feats))]  # each (N, E, H/4, W/4)
        return self.classifier(self.dropout(self.fuse(torch.cat(up[::-1], dim=1))))

    @torch.no_grad()
    def fold_for_inference(self) -> bool:
        """For eval: each map's projection folded into its slice of the fuse convolution (and its norm).

        ``fuse`` is linear over the concatenated maps and bilinear upsampling is linear, acting on each
        channel alone, so ``fuse(cat(Up(P_i f_i)))`` equals ``sum_i Up((W_i P_i) f_i)`` plus one bias:
        the ``4E -> E`` convolution at stride 4 becomes a ``C_i -> E`` one on each map's own grid
        (:class:`~segzoo.layers.upsampled_conv.UpsampledConcatConv`, the maps of up to 32 px spread by
        interpolation matrices, larger ones resized: its ``"auto"``). Exact to float rounding;
        training keeps the layers as they are.
        """
        affine = conv_norm_affine(self.fuse[0], self.fuse[1]) if len(self.fuse) == 3 else None
        if affine is None or not isinstance(self.fuse[2], nn.ReLU):
            return False
        weight, bias = affine[0].flatten(1), affine[1]  # (E, 4E): the maps concatenated deepest first
        e, n = weight.shape[0], len(self.proj)
        blocks = []
        for i, p in enumerate(self.proj):
            block = weight[:, (n - 1 - i) * e:(n - i) * e]
            blocks.append(block @ p.weight.double().flatten(1))  # (E, C_i)
            if p.bias is not None:
                bias = bias + block @ p.bias.double()
        channels = [p.in_channels for p in self.proj]
        # "auto": the maps of up to 32 px spread by matrices, larger ones resized (measured, see the layer)
        self.folded = UpsampledConcatConv(torch.cat(blocks, 1)[:, :, None, None], bias, channels,
                                          spread=["auto"] * (n - 1))
        self.folded.to(self.classifier.weight.dtype)
        return True


class SegFormer(SegmentationModel):
    """SegFormer: a four-stage body (MiT, or any hierarchical timm model) -> all-MLP head.

    Input and output as in :class:`~segzoo.models.base.SegmentationModel` (losses ``loss_ce``
    and ``loss``). MiT bodies take any input size; other bodies get inputs padded to a
    multiple of their deepest stride (and logits cropped back).

    Args:
        num_classes: classes including background.
        backbone: ``"mit_b0"`` ... ``"mit_b5"``, or a timm model with ``features_only`` whose
            last four levels are at strides 4-32 (``convnext_tiny``, ``swin_tiny_patch4_window7_224``,
            ``resnet50``).
        embed_dim: the head's width ``E``.
        dropout: dropout before the classifier.
        drop_path_rate: stochastic depth of MiT bodies (0.1 in the paper).
        norm_eps: epsilon of the MiT blocks' and stage-end LayerNorms (1e-6 as the paper's code;
            1e-5 is Hugging Face's port; see :class:`~segzoo.backbones.mit.MiT`).
        backbone_weights: a local weights file for the backbone, or a timm tag for timm bodies.
        ignore_index, mean, std, dice_weight, **loss_options: as in
            :class:`~segzoo.models.base.SegmentationModel`.
    """

    class_layers = ("decode_head.classifier",)

    def __init__(
        self,
        num_classes: int = 150,
        backbone: str = "mit_b0",
        *,
        embed_dim: int = 256,
        dropout: float = 0.1,
        drop_path_rate: float = 0.1,
        norm_eps: float = 1e-6,
        backbone_weights: str | os.PathLike | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        dice_weight: float = 0.0,
        **loss_options: Any,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std, ignore_index=ignore_index,
                         dice_weight=dice_weight, **loss_options)
        mit = dict(drop_path_rate=drop_path_rate, norm_eps=norm_eps) if backbone.startswith("mit_") else {}
        self.backbone = pyramid_backbone(backbone, backbone_weights, **mit)
        if len(self.backbone.channels) != 4:
            raise ValueError(f"SegFormer's head needs four maps, backbone {backbone!r} returns "
                             f"{len(self.backbone.channels)}")
        # MiT's padded convolutions take any size (and match the reference without padding)
        self.size_divisibility = 1 if isinstance(self.backbone, MiT) else max(self.backbone.strides)
        # ...but the first stage's 8 x 8 spatial-reduction conv needs a map of 8 x 8: inputs of 29 px and more
        self.min_input_size = 32 if isinstance(self.backbone, MiT) else 1
        self.decode_head = SegFormerHead(self.backbone.channels, num_classes, embed_dim=embed_dim, dropout=dropout)

    def forward_logits(self, x: torch.Tensor, with_aux: bool = False) -> tuple[torch.Tensor, None]:
        return self.decode_head(self.backbone(x)), None


def _segformer(name: str, backbone: str, embed_dim: int, /, **kwargs) -> SegFormer:
    return create(SegFormer, name, {"backbone": backbone, "embed_dim": embed_dim}, kwargs)


@register_model
def segformer_b0(**kwargs) -> SegFormer:
    return _segformer("segformer_b0", "mit_b0", 256, **kwargs)


@register_model
def segformer_b1(**kwargs) -> SegFormer:
    return _segformer("segformer_b1", "mit_b1", 256, **kwargs)


@register_model
def segformer_b2(**kwargs) -> SegFormer:
    return _segformer("segformer_b2", "mit_b2", 768, **kwargs)


@register_model
def segformer_b3(**kwargs) -> SegFormer:
    return _segformer("segformer_b3", "mit_b3", 768, **kwargs)


@register_model
def segformer_b4(**kwargs) -> SegFormer:
    return _segformer("segformer_b4", "mit_b4", 768, **kwargs)


@register_model
def segformer_b5(**kwargs) -> SegFormer:
    return _segformer("segformer_b5", "mit_b5", 768, **kwargs)


# ---------------------------------------------------------------------------- Hugging Face layout
# (published pattern, transformers-5 pattern, segzoo name); \1, \2 are the stage and block
_HF_ENCODER = (
    (r"encoder\.patch_embeddings\.(\d+)\.proj\.", r"stages\.(\d+)\.patch_embeddings\.proj\.",
     r"backbone.stages.\1.patch_embed.proj."),
    (r"encoder\.patch_embeddings\.(\d+)\.layer_norm\.", r"stages\.(\d+)\.patch_embeddings\.layer_norm\.",
     r"backbone.stages.\1.patch_embed.norm."),
    (r"encoder\.layer_norm\.(\d+)\.", r"stages\.(\d+)\.layer_norm\.", r"backbone.stages.\1.norm."),
)
_HF_BLOCK = (  # after encoder.block.{i}.{j}. / stages.{i}.blocks.{j}.
    ("layer_norm_1.", "layernorm_before.", "norm1."),
    ("attention.self.query.", "attention.q_proj.", "attn.q."),
    ("attention.self.key.", "attention.k_proj.", "attn.k."),
    ("attention.self.value.", "attention.v_proj.", "attn.v."),
    ("attention.self.sr.", "attention.sequence_reduction.sequence_reduction.", "attn.sr."),
    ("attention.self.layer_norm.", "attention.sequence_reduction.layer_norm.", "attn.sr_norm."),
    ("attention.output.dense.", "attention.o_proj.", "attn.proj."),
    ("layer_norm_2.", "layernorm_after.", "norm2."),
    ("mlp.dense1.", "mlp.fc1.", "ffn.fc1."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv.", "ffn.dwconv."),
    ("mlp.dense2.", "mlp.fc2.", "ffn.fc2."),
)
_HF_HEAD = (
    (r"decode_head\.(?:linear_c|linear_projections)\.(\d+)\.proj\.", r"decode_head.proj.\1."),
    (r"decode_head\.linear_fuse\.", "decode_head.fuse.0."),
    (r"decode_head\.batch_norm\.", "decode_head.fuse.1."),
    (r"decode_head\.classifier\.", "decode_head.classifier."),
)


_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked", "")  # "": a whole-key pattern


def _tail(prefix: str, rest: str) -> str | None:
    """``prefix + rest`` when ``rest`` names a layer's tensor (``weight``...), else None (a foreign key)."""
    return prefix + rest if rest in _TENSORS else None


def _map_encoder_key(k: str) -> str | None:
    """segzoo's name of a Hugging Face MiT key (without the ``segformer.`` prefix), or None."""
    for published, renamed, ours in _HF_ENCODER:
        for pattern in (published, renamed):
            m = re.match(pattern, k)
            if m:
                return _tail(m.expand(ours), k[m.end():])
    m = re.match(r"(?:encoder\.block|stages)\.(\d+)\.(?:blocks\.)?(\d+)\.", k)
    if m:
        rest = k[m.end():]
        for published, renamed, ours in _HF_BLOCK:
            for name in (published, renamed):
                if rest.startswith(name):
                    return _tail(f"backbone.stages.{m[1]}.blocks.{m[2]}.{ours}", rest[len(name):])
    return None


def map_huggingface(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Rename a Hugging Face ``SegformerForSemanticSegmentation`` state dict to segzoo's names.

    Accepts the published layout (``segformer.encoder.block.0.0.attention.self.query.weight``,
    ``decode_head.linear_c.0.proj.weight``) and transformers 5's in-memory names
    (``segformer.stages.0.blocks.0.attention.q_proj.weight``). Every key maps to exactly one
    segzoo key; the head's per-pixel Linear layers become 1x1 convolutions (a reshape).

    Returns:
        ``(segzoo state dict, num_classes)``.

    Raises:
        KeyError: naming every key that has no segzoo counterpart.
    """
    out, unknown = {}, []
    for k, v in state_dict.items():
        new = None
        if k.startswith("segformer."):
            new = _map_encoder_key(k[len("segformer."):])
        else:
            for pattern, ours in _HF_HEAD:
                m = re.match(pattern, k)
                if m:
                    new = _tail(m.expand(ours), k[m.end():])
                    break
        if new is None:
            unknown.append(k)
            continue
        if re.fullmatch(r"decode_head\.proj\.\d+\.weight", new):
            v = v[:, :, None, None]  # Linear (E, C) -> 1x1 conv (E, C, 1, 1)
        if new in out:
            raise KeyError(f"two Hugging Face keys map to {new}")
        out[new] = v
    if unknown:
        raise KeyError(f"{len(unknown)} keys are not SegFormer keys: {', '.join(unknown[:8])}")
    if "decode_head.classifier.weight" not in out:
        raise KeyError("no decode_head.classifier.weight: not a SegformerForSemanticSegmentation state dict")
    return out, int(out["decode_head.classifier.weight"].shape[0])


_SMP_BLOCK = (("norm1.", "norm1."), ("attn.q.", "attn.q."), ("attn.proj.", "attn.proj."), ("attn.sr.", "attn.sr."),
              ("attn.norm.", "attn.sr_norm."), ("norm2.", "norm2."), ("mlp.fc1.", "ffn.fc1."),
              ("mlp.dwconv.dwconv.", "ffn.dwconv."), ("mlp.fc2.", "ffn.fc2."))


def _smp_key(k: str) -> str | None:
    m = re.match(r"encoder\.patch_embed(\d)\.(proj|norm)\.", k)
    if m:
        return _tail(f"backbone.stages.{int(m[1]) - 1}.patch_embed.{m[2]}.", k[m.end():])
    m = re.match(r"encoder\.norm(\d)\.", k)
    if m:
        return _tail(f"backbone.stages.{int(m[1]) - 1}.norm.", k[m.end():])
    m = re.match(r"encoder\.block(\d)\.(\d+)\.", k)
    if m:
        rest = k[m.end():]
        for theirs, ours in _SMP_BLOCK:
            if rest.startswith(theirs):
                return _tail(f"backbone.stages.{int(m[1]) - 1}.blocks.{m[2]}.{ours}", rest[len(theirs):])
        return None
    m = re.match(r"decoder\.mlp_stage\.(\d)\.linear\.", k)  # deepest stage first
    if m:
        return _tail(f"decode_head.proj.{3 - int(m[1])}.", k[m.end():])
    m = re.match(r"decoder\.fuse_stage\.([01])\.", k)
    if m:
        return _tail(f"decode_head.fuse.{m[1]}.", k[m.end():])
    if k.startswith("segmentation_head.0."):
        return _tail("decode_head.classifier.", k[len("segmentation_head.0."):])
    return None


def map_smp(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Rename an smp ``Segformer`` (``encoder_name="mit_bN"``) state dict to segzoo's names: the
    fused ``attn.kv`` projection is split into ``attn.k`` and ``attn.v`` (its two halves), the head's
    linear layers (deepest stage first in smp) become 1x1 convolutions.

    Returns:
        ``(segzoo state dict, num_classes)``.

    Raises:
        KeyError: naming every key that has no segzoo counterpart.
    """
    out, unknown = {}, []
    for k, v in state_dict.items():
        kv = re.match(r"encoder\.block(\d)\.(\d+)\.attn\.kv\.(weight|bias)$", k)
        if kv:
            prefix = f"backbone.stages.{int(kv[1]) - 1}.blocks.{kv[2]}.attn."
            out[prefix + "k." + kv[3]], out[prefix + "v." + kv[3]] = v.chunk(2, dim=0)  # (2C, ...) -> k, v
            continue
        new = _smp_key(k)
        if new is None:
            unknown.append(k)
            continue
        out[new] = v[:, :, None, None] if re.fullmatch(r"decode_head\.proj\.\d+\.weight", new) else v
    if unknown:
        raise KeyError(f"{len(unknown)} keys are not smp Segformer keys: {', '.join(unknown[:8])}")
    if "decode_head.classifier.weight" not in out:
        raise KeyError("no segmentation_head.0.weight: not an smp Segformer state dict")
    return out, int(out["decode_head.classifier.weight"].shape[0])


def mit_variant(mapped: dict[str, torch.Tensor]) -> str | None:
    """The MiT variant (``"mit_b2"``) whose widths and depths a mapped state dict has, or None."""
    try:
        dims = tuple(int(mapped[f"backbone.stages.{i}.patch_embed.proj.weight"].shape[0]) for i in range(4))
    except KeyError:
        return None
    depths = tuple(len({k.split(".")[4] for k in mapped if k.startswith(f"backbone.stages.{i}.blocks.")})
                   for i in range(4))
    return next((n for n, a in MIT_ARCHS.items() if a.dims == dims and a.depths == depths), None)


def check_mit(model: nn.Module, mapped: dict[str, torch.Tensor], name: str) -> None:
    """Refuse a checkpoint whose MiT encoder is another variant than the model's, naming the right one."""
    if isinstance(model, SegFormer) and isinstance(model.backbone, MiT):
        found = mit_variant(mapped)
        if found != model.backbone.name:
            raise ValueError(f"the checkpoint holds a {found or 'non-standard MiT'} encoder but {name!r} has "
                             f"{model.backbone.name}; choose segformer_{found[-2:] if found else 'bN'}")


def from_smp(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    """Build segzoo model ``name`` holding an smp state dict; the class ``name`` builds picks the key map:
    SegFormer from ``Segformer(encoder_name="mit_bN")`` (:func:`map_smp`), UPerNet from ``UPerNet``
    (:func:`segzoo.models.upernet.map_smp`); ``num_classes`` is read from the source. smp's MiT has the
    paper's LayerNorm epsilons, segzoo's default. smp upsamples its stride-4 logits with
    ``align_corners=True``, segzoo (as Hugging Face and mmsegmentation) with ``False``."""
    load_families()
    key_map = key_map_for(SMP, entry_class(name))
    if key_map is None:
        raise ValueError(f"the smp converter builds SegFormer (segformer_b0 ... segformer_b5) and UPerNet "
                         f"(upernet_*) models, not {name!r}")
    return convert_with(key_map, state_dict, name, build_kwargs)


register_key_map(HUGGINGFACE, SegFormer, KeyMap(lambda state, _: map_huggingface(state), check=check_mit))
register_key_map(SMP, SegFormer, KeyMap(lambda state, _: map_smp(state), check=check_mit))
register_converter("smp", from_smp)


# ---------------------------------------------------------------------------- published weights
NVIDIA_LICENCE = ("NVIDIA Source Code License for SegFormer: non-commercial use only (research/evaluation); "
                  "ADE20K terms apply")
_MIT_METRIC = "the SegFormer paper, Table 1 (ADE20K val, single scale)"


def _nvidia_ade(model: str, repo: str, miou: float, size: int) -> WeightsEntry:
    return WeightsEntry(
        model=model, tag="ade", source="huggingface", converter="huggingface", hf_repo=repo,
        dataset=f"ADE20K (150 classes, {size}x{size} crops)", classes=ADE20K_CLASSES,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, metrics=(("miou", miou),), metric_source=_MIT_METRIC,
        licence=NVIDIA_LICENCE, file_name=f"{model}.ade.bin", page=f"https://huggingface.co/{repo}",
    )


register_weights(
    _nvidia_ade("segformer_b0", "nvidia/segformer-b0-finetuned-ade-512-512", 37.4, 512),
    _nvidia_ade("segformer_b1", "nvidia/segformer-b1-finetuned-ade-512-512", 42.2, 512),
    _nvidia_ade("segformer_b2", "nvidia/segformer-b2-finetuned-ade-512-512", 46.5, 512),
    _nvidia_ade("segformer_b3", "nvidia/segformer-b3-finetuned-ade-512-512", 49.4, 512),
    _nvidia_ade("segformer_b4", "nvidia/segformer-b4-finetuned-ade-512-512", 50.3, 512),
    _nvidia_ade("segformer_b5", "nvidia/segformer-b5-finetuned-ade-640-640", 51.0, 640),
)
