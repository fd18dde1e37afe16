"""The Hugging Face layout of Mask2Former: ``Mask2FormerForUniversalSegmentation`` state dicts
(the published ``facebook/mask2former-swin-*`` files, on transformers' Swin; or a timm body) mapped key
for key onto :class:`segzoo.models.mask2former.Mask2Former`, which registers them as its Hugging Face
key map; and the weights rows of the published checkpoints.

transformers' ``SwinBackbone`` maps onto timm's Swin (:func:`segzoo.models.upernet.hf_swin_key`):
``query/key/value`` joined into ``qkv``, relative position tables as they are, patch merging moved from
the end of a stage to the start of the next (both concatenate the 2 x 2 neighbours in the order
(0, 0), (1, 0), (0, 1), (1, 1), so ``reduction`` and ``norm`` need no permutation), and
``hidden_states_norms.stageK`` the model's ``out_norms``.
"""

from __future__ import annotations

import re
from types import MappingProxyType

import torch

from segzoo.data.formats.ade20k import ADE20K_CLASSES
from segzoo.data.formats.cityscapes import TRAIN_CLASSES as CITYSCAPES_CLASSES
from segzoo.hub.published import COCO_80, COCO_PANOPTIC, WeightsEntry
from segzoo.models.upernet import hf_swin_key
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD

# timm's Swin at any input size with shifted windows in every stage (HF's SwinBackbone: always_partition=True)
SWIN_ANY_SIZE = MappingProxyType({"dynamic_img_size": True, "always_partition": True})

_HF_PIXEL = "model.pixel_level_module."
_HF_DEC = "model.transformer_module."
_HF_RENAMES = (  # (Hugging Face infix, segzoo infix), applied in order after the prefix swap
    (".self_attn_layer_norm.", ".norm_self."),
    (".cross_attn_layer_norm.", ".norm_cross."),
    (".final_layer_norm.", ".norm_ffn."),
)


def _hf_key(key: str) -> tuple[str | None, int | None]:
    """The segzoo name of a Hugging Face ``Mask2FormerForUniversalSegmentation`` key (None: drop), and
    the slot (0 q, 1 k, 2 v) where three keys fill one joined projection."""
    if key.startswith("criterion."):
        return None, None  # the loss's no-object weight buffer
    if key.startswith("class_predictor."):
        return "decoder.class_embed." + key.split(".", 1)[1], None
    if key.startswith(_HF_PIXEL + "encoder._backbone."):  # a timm body (TimmBackboneConfig)
        return "backbone.body." + key[len(_HF_PIXEL + "encoder._backbone."):], None
    if key.startswith(_HF_PIXEL + "encoder."):  # transformers' Swin (SwinBackbone): timm's Swin
        k = key[len(_HF_PIXEL + "encoder."):]
        m = re.match(r"hidden_states_norms\.stage(\d)\.(weight|bias)$", k)
        if m:
            return f"out_norms.{int(m[1]) - 1}.{m[2]}", None
        name, slot = hf_swin_key(k.removeprefix("swin."))
        if name is None:
            raise KeyError(f"unexpected key {key!r}: not a Swin backbone key of a Mask2FormerForUniversalSegmentation")
        return name or None, slot
    if key.startswith(_HF_PIXEL + "decoder."):
        k = key[len(_HF_PIXEL + "decoder."):]
        if k.startswith("encoder.layers."):
            k = "layers." + k[len("encoder.layers."):]
            k = k.replace(".self_attn_layer_norm.", ".norm1.").replace(".final_layer_norm.", ".norm2.")
        elif k.startswith("input_projections."):
            k = "input_proj." + k[len("input_projections."):]
        elif k.startswith("mask_projection."):
            k = "mask_proj." + k[len("mask_projection."):]
        elif k.startswith("adapter_") or k.startswith("layer_"):
            name, rest = k.split(".", 1)
            kind, idx = name.rsplit("_", 1)
            k = f"{'lateral' if kind == 'adapter' else 'output'}.{int(idx) - 1}.{rest}"
        return "pixel_decoder." + k, None
    if key.startswith(_HF_DEC):
        k = key[len(_HF_DEC):]
        for old, new in (("queries_embedder.", "query_embed."), ("queries_features.", "query_feat."),
                         ("input_projections.", "input_proj."), ("decoder.layernorm.", "norm."),
                         ("decoder.layers.", "layers.")):
            if k.startswith(old):
                k = new + k[len(old):]
                break
        if k.startswith("decoder.mask_predictor.mask_embedder."):
            idx, rest = k[len("decoder.mask_predictor.mask_embedder."):].split(".", 1)
            k = f"mask_embed.{2 * int(idx)}.{rest.split('.', 1)[1]}"  # "0.weight" of the block -> "weight"
        for old, new in _HF_RENAMES:
            k = k.replace(old, new)
        m = re.match(r"(layers\.\d+\.self_attn)\.([qkv])_proj\.(weight|bias)$", k)
        if m:  # nn.MultiheadAttention's joined in_proj_weight / in_proj_bias
            return f"decoder.{m[1]}.in_proj_{m[3]}", "qkv".index(m[2])
        return "decoder." + k, None
    raise KeyError(f"unexpected key {key!r} in a Mask2FormerForUniversalSegmentation state dict")


def map_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Mask2FormerForUniversalSegmentation`` weights in segzoo's layout, renamed 1:1:
    the decoder's self-attention ``q/k/v_proj`` joined into ``in_proj_weight/bias``; a Swin body
    (transformers' ``SwinBackbone``, as the published ``facebook/mask2former-swin-*`` files; both
    their names and transformers 5's are read) becomes timm's Swin (``query/key/value`` joined into
    ``qkv``, patch merging moved to the start of the next stage, ``hidden_states_norms.stageK`` the
    ``out_norms``); a timm body (``TimmBackboneConfig``) keeps its names."""
    out: dict[str, torch.Tensor] = {}
    joined: dict[str, list[torch.Tensor | None]] = {}
    for key, value in state_dict.items():
        name, slot = _hf_key(key)
        if name is None:
            continue
        if slot is not None:
            joined.setdefault(name, [None, None, None])[slot] = value
        elif name in out:
            raise KeyError(f"two Hugging Face keys map to {name}")
        else:
            out[name] = value
    for name, parts in joined.items():
        if any(p is None for p in parts):
            missing = [n for n, p in zip(("query", "key", "value"), parts) if p is None]
            raise KeyError(f"{name}: the state dict lacks the {', '.join(missing)} projection")
        out[name] = torch.cat(parts)  # (3C, C): q, k, v
    return out


def hf_build_kwargs(config) -> dict:
    """:class:`Mask2Former` arguments equal to a Hugging Face ``Mask2FormerConfig``: with a Swin
    ``backbone_config`` (transformers' ``SwinBackbone``, as the published checkpoints) the body is
    timm's Swin at the config's sizes; with a timm body (``TimmBackboneConfig``) pass ``backbone``."""
    if getattr(config, "feature_size", None) != getattr(config, "hidden_dim", None):
        raise ValueError("segzoo's Mask2Former uses one width for the pixel decoder and the transformer; "
                         f"the config has feature_size={config.feature_size}, hidden_dim={config.hidden_dim}")
    out = dict(num_classes=config.num_labels, dim=config.hidden_dim, mask_dim=config.mask_feature_size,
               heads=config.num_attention_heads, encoder_layers=config.encoder_layers,
               encoder_ffn=config.encoder_feedforward_dim, decoder_layers=config.decoder_layers - 1,
               decoder_ffn=config.dim_feedforward, num_queries=config.num_queries,
               class_weight=config.class_weight, mask_weight=config.mask_weight, dice_weight=config.dice_weight,
               no_object_weight=config.no_object_weight, num_points=config.train_num_points)
    body = getattr(config, "backbone_config", None)
    if getattr(body, "model_type", None) == "swin":
        if list(body.out_features) != ["stage1", "stage2", "stage3", "stage4"]:
            raise ValueError(f"Mask2Former takes the four Swin stages, the config has out_features={body.out_features}")
        if body.use_absolute_embeddings or body.hidden_act != "gelu" or body.layer_norm_eps != 1e-5:
            raise ValueError("timm's Swin has no absolute position embedding, uses GELU and LayerNorm eps 1e-5: "
                             "the config differs")
        out.update(backbone="swin_tiny_patch4_window7_224", out_norm_eps=1e-5,  # SwinBackbone's nn.LayerNorm
                   backbone_kwargs=dict(SWIN_ANY_SIZE, embed_dim=body.embed_dim, depths=tuple(body.depths),
                                        num_heads=tuple(body.num_heads), window_size=body.window_size,
                                        mlp_ratio=body.mlp_ratio, qkv_bias=body.qkv_bias, patch_size=body.patch_size))
    return out


def _layers(mapped: dict, prefix: str) -> int:
    return 1 + max(int(k[len(prefix):].split(".", 1)[0]) for k in mapped if k.startswith(prefix))


def hf_implied_kwargs(mapped: dict[str, torch.Tensor]) -> dict:
    """The :class:`Mask2Former` sizes that mapped weights imply (queries, widths, depths; the heads, 8,
    cannot be read from shapes)."""
    queries, dim = mapped["decoder.query_feat.weight"].shape
    return dict(num_queries=queries, dim=dim,
                mask_dim=mapped["decoder.mask_embed.4.weight"].shape[0],
                encoder_layers=_layers(mapped, "pixel_decoder.layers."),
                encoder_ffn=mapped["pixel_decoder.layers.0.fc1.weight"].shape[0],
                decoder_layers=_layers(mapped, "decoder.layers."),
                decoder_ffn=mapped["decoder.layers.0.fc1.weight"].shape[0])


def map_hf(state: dict, name: str) -> tuple[dict[str, torch.Tensor], int]:
    mapped = map_hf_state_dict(state)
    if "decoder.class_embed.weight" not in mapped:
        raise KeyError("no class_predictor.weight: not a Mask2FormerForUniversalSegmentation state dict")
    return mapped, int(mapped["decoder.class_embed.weight"].shape[0]) - 1  # the last output is "no object"


def describe_hf(state: dict) -> tuple[str, str]:
    swin = [k for k in state if ".patch_embeddings.projection.weight" in k]
    dim = int(state[swin[0]].shape[0]) if swin else None
    body = {96: "Swin-T or Swin-S", 128: "Swin-B", 192: "Swin-L"}.get(dim, f"a {dim}-channel Swin")
    return (f"a Mask2Former on {body}" if swin else "a Mask2Former on a timm body",
            "pass the body of its size: backbone='swin_small_patch4_window7_224' (Swin-S, 96 channels), "
            "'swin_base_patch4_window12_384' (128) or 'swin_large_patch4_window12_384' (192)")


# ---------------------------------------------------------------------------------------------- published weights
M2F_LICENCE = ("CC BY-NC 4.0: non-commercial use only (the licence of the Mask2Former model zoo's weights; the "
               "Hugging Face cards say 'other'); the code is MIT, the Swin ImageNet weights it started from MIT; "
               "the dataset's terms apply")
M2F_METRICS = "the Mask2Former model zoo (MODEL_ZOO.md, single scale; the paper's tables)"
_DATASETS = {  # tag -> (dataset, schedule, classes, num_stuff, metric names in the model zoo's column order)
    "coco_panoptic": ("COCO panoptic train2017 (133 categories: 80 things, then 53 stuff", "50 epochs", COCO_PANOPTIC,
                      53, ("pq", "mask_map", "miou")),
    "coco_instance": ("COCO train2017 instances (80 categories", "50 epochs", COCO_80, 0, ("mask_map",)),
    "ade": ("ADE20K (150 classes", "160k iterations", ADE20K_CLASSES, 0, ("miou",)),
    "cityscapes": ("Cityscapes (19 train ids", "90k iterations", CITYSCAPES_CLASSES, 0, ("miou",)),
}
_REPO = {"coco_panoptic": "coco-panoptic", "coco_instance": "coco-instance", "ade": "ade-semantic",
         "cityscapes": "cityscapes-semantic"}


def _m2f(size: str, tag: str, *metrics: float) -> WeightsEntry:
    dataset, schedule, classes, stuff, names = _DATASETS[tag]
    repo = f"facebook/mask2former-swin-{size}-{_REPO[tag]}"
    return WeightsEntry(
        model=f"mask2former_swin_{size}", tag=tag, source="huggingface", converter="huggingface", hf_repo=repo,
        dataset=f"{dataset}; {schedule})", classes=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        metrics=tuple(zip(names, metrics)), metric_source=M2F_METRICS, licence=M2F_LICENCE,
        file_name=f"mask2former_swin_{size}.{tag}.bin", page=f"https://huggingface.co/{repo}",
        convert_kwargs=(("num_stuff", stuff),) if stuff else ())


WEIGHTS = (
    _m2f("tiny", "coco_panoptic", 53.2, 43.3, 63.2),
    _m2f("tiny", "coco_instance", 45.0),
    _m2f("tiny", "ade", 47.7),
    _m2f("tiny", "cityscapes", 82.1),
)
