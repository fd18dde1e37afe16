"""UPerNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018) as
used with ConvNeXt and Swin (Liu et al. 2021/2022; mmsegmentation's and Hugging Face's
``UperNetForSemanticSegmentation``): a pyramid pooling module on the last stage, FPN fusion of all
four stages and a fused 3x3 head, plus an auxiliary FCN head on the third stage (weight 0.4).

For the four maps ``C_1..C_4`` (strides 4-32) and width ``D`` (512)::

    P_4 = ConvBNReLU3x3(cat(C_4, PPM_1(C_4), PPM_2(C_4), PPM_3(C_4), PPM_6(C_4)))   PPM_b: b x b
          average pooling -> ConvBNReLU1x1 to D -> bilinear upsampling back
    L_i = ConvBNReLU1x1(C_i -> D), i < 4;  L_i += Upsample(L_{i+1}) from the top down
    P_i = ConvBNReLU3x3(L_i), i < 4
    logits = Conv1x1(Dropout(ConvBNReLU3x3(cat(P_1, Up(P_2), Up(P_3), Up(P_4)))))      stride 4
    aux    = FCN head on C_3: ConvBNReLU3x3 to 256 -> Dropout -> Conv1x1               stride 16

Transformer and ConvNeXt bodies normalise each returned map (a LayerNorm per level, as
mmsegmentation's and Hugging Face's ConvNeXt/Swin backbones do): ``out_norm_eps``.

The key map of Hugging Face's layout (the published ``openmmlab/upernet-convnext-*`` and
``openmmlab/upernet-swin-*`` files) is :func:`map_huggingface`, beside the family.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from segzoo.data.formats.ade20k import ADE20K_CLASSES
from segzoo.hub.published import WeightsEntry, register_weights
from segzoo.layers import ConvNormAct, FCNHead, PyramidPooling
from segzoo.layers.ppm import PyramidPoolingConv
from segzoo.layers.upsampled_conv import UpsampledConcatConv, conv_norm_affine
from segzoo.models.base import SegmentationModel
from segzoo.models.converters import HUGGINGFACE, SMP, KeyMap, register_key_map
from segzoo.models.segformer import _tail, pyramid_backbone
from segzoo.registry import create, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD


class UPerHead(nn.Module):
    """PPM + FPN + fused 3x3 conv -> classifier (see the module docstring).

    Input: four maps, finest first. Output: logits at the finest map's size.

    Args:
        in_channels: channels of the four maps.
        num_classes: classes including background.
        channels: the head's width ``D`` (512).
        bins: pyramid pooling grid sizes (1, 2, 3, 6).
        dropout: dropout before the classifier (0.1, as mmsegmentation).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, *, channels: int = 512,
                 bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], bins, channels)
        self.bottleneck = ConvNormAct(self.ppm.out_channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvNormAct(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.folded: nn.ModuleDict | None = None  # fold_for_inference: the two convs over upsampled maps

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.folded is not None and not self.training:
            return self._folded_forward(feats)
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.bottleneck(self.ppm(feats[-1])))  # (N, D, H/32, W/32)
        for i in range(len(laterals) - 1, 0, -1):  # top-down: L_i += Up(L_{i+1})
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))  # (N, K, H/4, W/4)

    def _folded_forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` with the PPM bottleneck and the fuse convolution on the small maps."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.bottleneck[2](self.folded["bottleneck"](feats[-1])))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        fused = self.fpn_bottleneck[2](self.folded["fpn_bottleneck"](outs[0], outs[1:]))
        # contiguous logits: the resize to the input size then writes them in the caller's layout (no
        # transposition of the full-size channels_last logits afterwards: 4x the resize's time)
        return self.classifier(self.dropout(fused)).contiguous()

    @torch.no_grad()
    def fold_for_inference(self) -> bool:
        """For eval: the PPM bottleneck and the fuse convolution (each a 3x3 conv over maps upsampled to
        its size) computed with each map's channel mixing on its own small grid: the bottleneck as PSPNet's
        (:class:`~segzoo.layers.ppm.PyramidPoolingConv`), the fuse conv as an
        :class:`~segzoo.layers.upsampled_conv.UpsampledConcatConv` whose three upsampled maps are resized
        (``"resize"``); the stride-4 fuse conv over ``4D`` channels becomes a ``D``-channel one plus three
        on the 8-32 stride grids. Exact to float rounding; training keeps the layers as they are."""
        for block in (self.bottleneck, self.fpn_bottleneck):
            conv = block[0]
            if (len(block) != 3 or conv_norm_affine(conv, block[1]) is None or type(conv) is not nn.Conv2d
                    or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1
                    or conv.padding != (conv.kernel_size[0] // 2,) * 2 or not isinstance(block[2], nn.ReLU)):
                return False
        if not all(len(s) == 4 and isinstance(s[0], nn.AdaptiveAvgPool2d) for s in self.ppm.stages):
            return False
        conv, norm = self.fpn_bottleneck[0], self.fpn_bottleneck[1]
        channels = [self.fpn_convs[0][0].out_channels] * (len(self.fpn_convs) + 1)
        folded = {"bottleneck": PyramidPoolingConv(self.ppm, self.bottleneck[0], self.bottleneck[1]),
                  "fpn_bottleneck": UpsampledConcatConv(*conv_norm_affine(conv, norm), channels)}
        self.folded = nn.ModuleDict(folded).to(self.classifier.weight.dtype)
        return True


class UPerNet(SegmentationModel):
    """UPerNet: a four-stage body -> PPM + FPN fusion head (+ auxiliary FCN head on stage 3).

    Losses ``loss_ce``, ``loss_aux`` (weight ``aux_weight``) and ``loss``. Inputs are padded to a
    multiple of the deepest stride (32) and the logits cropped back.

    Args:
        num_classes: classes including background.
        backbone: a timm model with ``features_only`` whose last four levels are at strides 4-32
            (``convnext_tiny``, ``swin_tiny_patch4_window7_224``, ``resnet50``), or a segzoo body
            (``mit_b2``, ``hrnet_w18``).
        channels: the head's width (512).
        bins: pyramid pooling grid sizes.
        dropout: dropout before both classifiers (0.1).
        out_norm_eps: LayerNorm each backbone map with this epsilon (ConvNeXt 1e-6, Swin 1e-5);
            None: no norms (ResNet).
        aux_loss: add the auxiliary FCN head on the third map.
        aux_channels: its width (256).
        aux_weight: its loss weight (0.4).
        backbone_weights: local weights file for the backbone, or a timm tag (``"imagenet"``).
        ignore_index, mean, std, dice_weight, **loss_options: as in
            :class:`~segzoo.models.base.SegmentationModel`.
    """

    class_layers = ("decode_head.classifier", "aux_head.4")
    size_divisibility = 32

    def __init__(
        self,
        num_classes: int = 150,
        backbone: str = "convnext_tiny",
        *,
        channels: int = 512,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        out_norm_eps: float | None = 1e-6,
        aux_loss: bool = True,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        backbone_weights: str | os.PathLike | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        dice_weight: float = 0.0,
        **loss_options: Any,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std, ignore_index=ignore_index,
                         aux_weight=aux_weight if aux_loss else 0.0, dice_weight=dice_weight, **loss_options)
        self.backbone = pyramid_backbone(backbone, backbone_weights)
        chs = self.backbone.channels
        if len(chs) != 4:
            raise ValueError(f"UPerNet needs four maps, backbone {backbone!r} returns {len(chs)}")
        self.size_divisibility = max(32, max(self.backbone.strides))
        self.out_norms = (nn.ModuleList(LayerNorm2d(c, eps=out_norm_eps) for c in chs)
                          if out_norm_eps is not None else None)
        self.decode_head = UPerHead(chs, num_classes, channels=channels, bins=bins, dropout=dropout)
        self.aux_head = FCNHead(chs[2], num_classes, channels=aux_channels, dropout=dropout) if aux_loss else None

    def forward_logits(self, x: torch.Tensor, with_aux: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.backbone(x)
        if self.out_norms is not None:
            feats = [norm(f) for norm, f in zip(self.out_norms, feats)]
        aux = self.aux_head(feats[2]) if with_aux and self.aux_head is not None else None
        return self.decode_head(feats), aux


def _upernet(name: str, backbone: str, out_norm_eps: float | None, /, **kwargs) -> UPerNet:
    return create(UPerNet, name, {"backbone": backbone, "out_norm_eps": out_norm_eps}, kwargs)


@register_model
def upernet_convnext_tiny(**kwargs) -> UPerNet:
    return _upernet("upernet_convnext_tiny", "convnext_tiny", 1e-6, **kwargs)


@register_model
def upernet_swin_tiny(**kwargs) -> UPerNet:
    return _upernet("upernet_swin_tiny", "swin_tiny_patch4_window7_224", 1e-5, **kwargs)


@register_model
def upernet_resnet50(**kwargs) -> UPerNet:
    return _upernet("upernet_resnet50", "resnet50", None, **kwargs)


# ---------------------------------------------------------------------------- Hugging Face layout
_CONVNEXT = (  # Hugging Face ConvNextBackbone -> timm convnext (features_only names)
    (r"backbone\.embeddings\.patch_embeddings\.", "backbone.body.stem_0."),
    (r"backbone\.embeddings\.layernorm\.", "backbone.body.stem_1."),
    (r"backbone\.encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.", r"backbone.body.stages_\1.downsample.\2."),
    (r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.", r"backbone.body.stages_\1.blocks.\2.conv_dw."),
    (r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", r"backbone.body.stages_\1.blocks.\2.norm."),
    (r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1\.", r"backbone.body.stages_\1.blocks.\2.mlp.fc1."),
    (r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2\.", r"backbone.body.stages_\1.blocks.\2.mlp.fc2."),
    (r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$",
     r"backbone.body.stages_\1.blocks.\2.gamma"),
)
_HEAD = (  # UperNetConvModule (conv, batch_norm) -> ConvNormAct (0, 1)
    (r"decode_head\.psp_modules\.(\d+)\.1\.conv\.", r"decode_head.ppm.stages.\1.1."),
    (r"decode_head\.psp_modules\.(\d+)\.1\.batch_norm\.", r"decode_head.ppm.stages.\1.2."),
    (r"decode_head\.(bottleneck|fpn_bottleneck)\.conv\.", r"decode_head.\1.0."),
    (r"decode_head\.(bottleneck|fpn_bottleneck)\.batch_norm\.", r"decode_head.\1.1."),
    (r"decode_head\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.", r"decode_head.\1.\2.0."),
    (r"decode_head\.(lateral_convs|fpn_convs)\.(\d+)\.batch_norm\.", r"decode_head.\1.\2.1."),
    (r"decode_head\.classifier\.", "decode_head.classifier."),
    (r"auxiliary_head\.convs\.0\.conv\.", "aux_head.0."),
    (r"auxiliary_head\.convs\.0\.batch_norm\.", "aux_head.1."),
    (r"auxiliary_head\.classifier\.", "aux_head.4."),
)


_SWIN_BLOCK = (  # after layers.{i}.blocks.{j}.: (published, transformers 5, timm)
    ("layernorm_before.", "layernorm_before.", "norm1."),
    ("layernorm_after.", "layernorm_after.", "norm2."),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table",
     "attn.relative_position_bias_table"),
    ("attention.output.dense.", "attention.o_proj.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2.", "mlp.fc2."),
)
_SWIN_QKV = {"query": 0, "key": 1, "value": 2, "q_proj": 0, "k_proj": 1, "v_proj": 2}


def hf_swin_key(k: str) -> tuple[str | None, int | None]:
    """timm's name of a Hugging Face Swin backbone key (``backbone.`` / ``backbone.swin.`` stripped),
    and the slot (0 q, 1 k, 2 v) where three keys fill one ``qkv`` tensor; ``("", None)`` for keys
    without a timm counterpart that change nothing (buffers timm recomputes, the unused last norm)."""
    if k.startswith("embeddings.patch_embeddings.projection."):
        return _tail("backbone.body.patch_embed.proj.", k.rsplit(".", 1)[1]), None
    if k.startswith("embeddings.norm."):
        return _tail("backbone.body.patch_embed.norm.", k.rsplit(".", 1)[1]), None
    if k.startswith("layernorm."):  # SwinModel's final norm: SwinBackbone's outputs do not use it
        return "", None
    m = re.match(r"encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(\w+)$", k)
    if m:  # Hugging Face merges patches at the end of a stage, timm at the start of the next one
        return _tail(f"backbone.body.layers_{int(m[1]) + 1}.downsample.{m[2]}.", m[3]), None
    m = re.match(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.", k)
    if not m:
        return None, None
    rest, prefix = k[m.end():], f"backbone.body.layers_{m[1]}.blocks.{m[2]}."
    if rest.endswith("relative_position_index") or rest.endswith("attn_mask"):
        return "", None
    q = re.match(r"attention\.(?:self\.)?(query|key|value|q_proj|k_proj|v_proj)\.(\w+)$", rest)
    if q:
        return _tail(prefix + "attn.qkv.", q[2]), _SWIN_QKV[q[1]]
    for published, renamed, ours in _SWIN_BLOCK:
        for name in (published, renamed):
            if rest.startswith(name):
                return _tail(prefix + ours, rest[len(name):]), None
    return None, None


def map_huggingface(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Rename a Hugging Face ``UperNetForSemanticSegmentation`` state dict to segzoo's names.

    ConvNeXt backbones map key for key to timm's ConvNeXt; Swin backbones to timm's Swin, where
    the ``query``/``key``/``value`` projections are concatenated into ``qkv`` and patch merging
    moves to the next stage. ``hidden_states_norms.stage{k}`` become ``out_norms.{k-1}`` and the
    heads' ``conv``/``batch_norm`` pairs ``ConvNormAct``'s ``0``/``1``. Both the published
    layout and transformers 5's names are read.

    Returns:
        ``(segzoo state dict, num_classes)``.

    Raises:
        KeyError: naming every key that has no segzoo counterpart.
    """
    out, unknown, qkv = {}, [], {}
    swin = any(".encoder.layers." in k for k in state_dict)
    for k, v in state_dict.items():
        new, slot = None, None
        m = re.match(r"backbone\.hidden_states_norms\.stage(\d+)\.", k)
        if m:
            new = _tail(f"out_norms.{int(m[1]) - 1}.", k[m.end():])
        elif swin and k.startswith("backbone."):
            new, slot = hf_swin_key(k.removeprefix("backbone.").removeprefix("swin."))
        for pattern, ours in (() if swin else _CONVNEXT) + _HEAD:
            if new is not None:
                break
            m = re.match(pattern, k)
            if m:
                new = _tail(m.expand(ours), k[m.end():])
        if new is None:
            unknown.append(k)
        elif new == "":
            continue
        elif slot is not None:
            qkv.setdefault(new, [None, None, None])[slot] = v
        elif new in out:
            raise KeyError(f"two Hugging Face keys map to {new}")
        else:
            out[new] = v
    for new, parts in qkv.items():
        if any(p is None for p in parts):
            raise KeyError(f"{new} needs the query, key and value tensors; the file lacks some")
        out[new] = torch.cat(parts, dim=0)  # (3C, C): q, k, v as timm's qkv
    if unknown:
        kind = "UPerNet-Swin" if swin else "UPerNet-ConvNeXt"
        raise KeyError(f"{len(unknown)} keys are not {kind} keys: {', '.join(unknown[:8])}")
    if "decode_head.classifier.weight" not in out:
        raise KeyError("no decode_head.classifier.weight: not an UperNetForSemanticSegmentation state dict")
    return out, int(out["decode_head.classifier.weight"].shape[0])


register_key_map(HUGGINGFACE, UPerNet, KeyMap(lambda state, _: map_huggingface(state)))


# ---------------------------------------------------------------------------- smp layout
_SMP = (  # segmentation_models_pytorch UPerNet -> segzoo
    (r"encoder\.model\.", "backbone.body."),  # timm bodies through smp's "tu-" encoders
    (r"encoder\.", "backbone.body."),  # smp's own ResNet encoders (timm's names)
    (r"decoder\.feature_norms\.(\d)\.", r"out_norms.\1."),
    # psp.blocks.{b}.1.{0 conv, 1 bn} -> ppm.stages.{b}.{1 conv, 2 bn} (0 is the pooling)
    (r"decoder\.psp\.blocks\.(\d)\.1\.0\.", r"decode_head.ppm.stages.\1.1."),
    (r"decoder\.psp\.blocks\.(\d)\.1\.1\.", r"decode_head.ppm.stages.\1.2."),
    (r"decoder\.psp\.out_conv\.", "decode_head.bottleneck."),
    (r"decoder\.fusion_block\.", "decode_head.fpn_bottleneck."),
    (r"segmentation_head\.0\.", "decode_head.classifier."),
)


def map_smp(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Rename an smp ``UPerNet`` state dict to segzoo's names: smp counts its FPN levels from the
    coarsest (stride 16) down, segzoo from the finest (stride 4) up; smp LayerNorms every body map
    (``out_norms``, eps 1e-6) and has no auxiliary head.

    Returns:
        ``(segzoo state dict, num_classes)``.

    Raises:
        KeyError: naming every key that has no segzoo counterpart.
    """
    out, unknown = {}, []
    for k, v in state_dict.items():
        m = re.match(r"decoder\.(fpn_lateral_blocks|fpn_conv_blocks)\.(\d)\.(?:conv_norm_relu\.)?", k)
        if m:
            part = "lateral_convs" if m[1] == "fpn_lateral_blocks" else "fpn_convs"
            out[f"decode_head.{part}.{2 - int(m[2])}.{k[m.end():]}"] = v
            continue
        for pattern, repl in _SMP:
            hit = re.match(pattern, k)
            if hit:
                out[hit.expand(repl) + k[hit.end():]] = v
                break
        else:
            unknown.append(k)
    if unknown:
        raise KeyError(f"{len(unknown)} keys are not smp UPerNet keys: {', '.join(unknown[:8])}")
    if "decode_head.classifier.weight" not in out:
        raise KeyError("no segmentation_head.0.weight: not an smp UPerNet state dict")
    return out, int(out["decode_head.classifier.weight"].shape[0])


def _smp_defaults(mapped: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What an smp UPerNet is: its decoder width (256 by default), LayerNorms eps 1e-6, no auxiliary head."""
    return {"channels": int(mapped["decode_head.classifier.weight"].shape[1]), "out_norm_eps": 1e-6,
            "aux_loss": False, "dropout": 0.0}


def _smp_describe(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    return "an smp UPerNet", "upernet_* built on the same body as the smp encoder (resnet50: upernet_resnet50)"


register_key_map(SMP, UPerNet, KeyMap(lambda state, _: map_smp(state), build_defaults=_smp_defaults,
                                      describe=_smp_describe))

# ---------------------------------------------------------------------------- published weights
def _openmmlab(model: str, repo: str, miou: float, paper: str) -> WeightsEntry:
    return WeightsEntry(
        model=model, tag="ade", source="huggingface", converter="huggingface", hf_repo=repo,
        dataset="ADE20K (150 classes, 512x512 crops, 160k iterations)", classes=ADE20K_CLASSES,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, metrics=(("miou", miou),),
        metric_source=f"{paper} (ADE20K val, single scale; mmsegmentation's UPerNet)",
        licence="MIT (the model card of the Hugging Face repository; the body's code and weights); ADE20K terms apply",
        file_name=f"{model}.ade.bin", page=f"https://huggingface.co/{repo}",
    )


register_weights(
    _openmmlab("upernet_convnext_tiny", "openmmlab/upernet-convnext-tiny", 46.0, "the ConvNeXt paper, Table 3"),
    _openmmlab("upernet_swin_tiny", "openmmlab/upernet-swin-tiny", 44.5, "the Swin Transformer paper, Table 3"),
)
