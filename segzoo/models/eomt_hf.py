"""The published layouts of EoMT mapped key for key onto :class:`segzoo.models.eomt.EoMT` (which
registers them as its Hugging Face key map), and the weights rows of the ``tue-mps/*eomt*`` checkpoints.

Two layouts are read: Hugging Face's ``EomtForUniversalSegmentation`` (``embeddings.*``, ``layers.N.*``
with separate ``q/k/v_proj``: joined into timm's ``qkv``) and the official code's (``network.encoder.
backbone.*``, a timm ViT), which the ``pytorch_model.bin`` files of the ``tue-mps`` repositories hold.
Both are DINOv2 ViTs with register tokens and layer scale, re-trained at patch size 16; the position
table covers the training grid (40 x 40 at 640 px), which :func:`implied_kwargs` reads back as
``img_size``. Hugging Face's model needs that input size; segzoo's resamples the table (bicubic, timm's
``dynamic_img_size``) for other sizes and equals it at the training size.
"""

from __future__ import annotations

import math

import torch

from segzoo.data.formats.ade20k import ADE20K_CLASSES
from segzoo.data.formats.cityscapes import TRAIN_CLASSES as CITYSCAPES_CLASSES
from segzoo.hub.published import COCO_80, COCO_PANOPTIC, WeightsEntry
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD


def _hf_key(key: str) -> str | None:
    """The segzoo name of a Hugging Face ``EomtForUniversalSegmentation`` key (None: drop)."""
    if key.startswith("criterion.") or key == "embeddings.position_ids":
        return None
    fixed = {"embeddings.cls_token": "vit.cls_token", "embeddings.register_tokens": "vit.reg_token",
             "embeddings.position_embeddings.weight": "vit.pos_embed", "attn_mask_probs": "attn_mask_probs"}
    if key in fixed:
        return fixed[key]
    for old, new in (("embeddings.patch_embeddings.projection.", "vit.patch_embed.proj."), ("layernorm.", "vit.norm."),
                     ("query.", "query."), ("class_predictor.", "class_head.")):
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith("mask_head.fc"):
        idx, rest = key[len("mask_head.fc"):].split(".", 1)
        return f"mask_head.{2 * (int(idx) - 1)}.{rest}"
    if key.startswith("upscale_block.block."):
        idx, name, rest = key[len("upscale_block.block."):].split(".", 2)
        return f"upscale.{idx}.{ {'conv1': 'up', 'conv2': 'dw', 'layernorm2d': 'norm'}[name]}.{rest}"
    if key.startswith("layers."):
        idx, rest = key[len("layers."):].split(".", 1)
        for old, new in (("norm1.", "norm1."), ("norm2.", "norm2."), ("attention.out_proj.", "attn.proj."),
                         ("attention.", "attn."), ("layer_scale1.lambda1", "ls1.gamma"),
                         ("layer_scale2.lambda1", "ls2.gamma"), ("mlp.", "mlp.")):
            if rest.startswith(old):
                return f"vit.blocks.{idx}.{new}{rest[len(old):]}"
    raise KeyError(f"unexpected key {key!r} in an EomtForUniversalSegmentation state dict")


def map_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``EomtForUniversalSegmentation`` weights in segzoo's layout: renamed 1:1, each
    block's separate ``q/k/v_proj`` joined into timm's ``qkv``, the position table given its batch axis.
    The official code's layout (``network.encoder.backbone.*``: a timm ViT, as the ``pytorch_model.bin``
    of the ``tue-mps/*eomt*`` repositories) is read too (:func:`map_official_state_dict`)."""
    if any(k.startswith(_OFFICIAL) for k in state_dict):
        return map_official_state_dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name = _hf_key(key)
        if name is None or value.numel() == 0:  # no register tokens: timm has no reg_token
            continue
        if "swiglu" in key or "weights_in" in key:
            raise KeyError(f"{key}: SwiGLU blocks (use_swiglu_ffn=True) are not supported")
        part = next((p for p in ("q_proj", "k_proj", "v_proj") if f".attn.{p}." in name), None)
        if part is not None:
            prefix, kind = name.split(f".attn.{part}.")
            qkv.setdefault(f"{prefix}.attn.qkv.{kind}", {})[part] = value
            continue
        out[name] = value[None] if name == "vit.pos_embed" else value
    for name, parts in qkv.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise KeyError(f"{name}: the state dict lacks {sorted({'q_proj', 'k_proj', 'v_proj'} - set(parts))}")
        out[name] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


_OFFICIAL = "network."
_OFFICIAL_UPSCALE = {"conv1": "up", "conv2": "dw", "norm": "norm"}


def map_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official EoMT code's weights (``network.encoder.backbone`` a timm ViT; ``network.q``,
    ``class_head``, ``mask_head``, ``upscale``) in segzoo's layout, renamed 1:1. Its input statistics
    must be ImageNet's, which segzoo's EoMT applies."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("criterion."):
            continue
        if not key.startswith(_OFFICIAL):
            raise KeyError(f"unexpected key {key!r} in an official EoMT state dict (network.*)")
        k = key[len(_OFFICIAL):]
        if k in ("encoder.pixel_mean", "encoder.pixel_std"):
            expected = torch.tensor(IMAGENET_MEAN if k.endswith("mean") else IMAGENET_STD)
            if not torch.allclose(value.flatten().float(), expected, atol=1e-4):
                raise ValueError(f"{key} is {value.flatten().tolist()}, not ImageNet's: pass mean/std to build")
            continue
        if k.startswith("encoder.backbone."):
            out["vit." + k[len("encoder.backbone."):]] = value
        elif k.startswith("q."):
            out["query." + k[2:]] = value
        elif k.startswith("upscale."):
            idx, name, rest = k[len("upscale."):].split(".", 2)
            if name not in _OFFICIAL_UPSCALE:
                raise KeyError(f"unexpected key {key!r} in an official EoMT state dict")
            out[f"upscale.{idx}.{_OFFICIAL_UPSCALE[name]}.{rest}"] = value
        elif k.startswith(("class_head.", "mask_head.")) or k == "attn_mask_probs":
            out[k] = value
        else:
            raise KeyError(f"unexpected key {key!r} in an official EoMT state dict")
    return out


def hf_build_kwargs(config) -> dict:
    """:class:`EoMT` arguments equal to a Hugging Face ``EomtConfig`` (timm's DINOv2-with-registers
    layout, resized to the config's width and depth)."""
    if config.use_swiglu_ffn:
        raise ValueError("SwiGLU blocks (use_swiglu_ffn=True, the giant ViTs) are not supported")
    if config.hidden_act != "gelu":
        raise ValueError(f"only hidden_act='gelu' is supported, got {config.hidden_act!r}")
    vit = dict(embed_dim=config.hidden_size, depth=config.num_hidden_layers, num_heads=config.num_attention_heads,
               mlp_ratio=config.mlp_ratio, reg_tokens=config.num_register_tokens, init_values=config.layerscale_value,
               no_embed_class=True)
    return dict(num_classes=config.num_labels, backbone="vit_small_patch14_reg4_dinov2", patch_size=config.patch_size,
                img_size=config.image_size, backbone_kwargs=vit, num_queries=config.num_queries,
                num_blocks=config.num_blocks, upscale_blocks=config.num_upscale_blocks,
                class_weight=config.class_weight, mask_weight=config.mask_weight, dice_weight=config.dice_weight,
                no_object_weight=config.no_object_weight, num_points=config.train_num_points,
                oversample_ratio=config.oversample_ratio, importance_sample_ratio=config.importance_sample_ratio)


def implied_kwargs(mapped: dict[str, torch.Tensor]) -> dict:
    """The :class:`EoMT` sizes that mapped weights imply: queries, query blocks, upscale blocks, patch
    size and the ``img_size`` of the position table (a square grid)."""
    patch = int(mapped["vit.patch_embed.proj.weight"].shape[-1])
    grid = math.isqrt(int(mapped["vit.pos_embed"].shape[1]))
    if grid * grid != mapped["vit.pos_embed"].shape[1]:
        raise ValueError(f"the position table has {mapped['vit.pos_embed'].shape[1]} entries, not a square grid")
    return dict(num_queries=int(mapped["query.weight"].shape[0]), num_blocks=int(mapped["attn_mask_probs"].numel()),
                upscale_blocks=1 + max(int(k.split(".")[1]) for k in mapped if k.startswith("upscale.")),
                patch_size=patch, img_size=grid * patch)


def map_hf(state: dict, name: str) -> tuple[dict[str, torch.Tensor], int]:
    mapped = map_hf_state_dict(state)
    if "class_head.weight" not in mapped:
        raise KeyError("no class_predictor.weight / network.class_head.weight: not an EoMT state dict")
    return mapped, int(mapped["class_head.weight"].shape[0]) - 1  # the last output is "no object"


def describe_hf(state: dict) -> tuple[str, str]:
    widths = [int(v.shape[0]) for k, v in state.items() if k.endswith("patch_embeddings.projection.weight")
              or k.endswith("backbone.patch_embed.proj.weight")]
    vit = {384: "ViT-S", 768: "ViT-B", 1024: "ViT-L"}.get(widths[0] if widths else 0, "another ViT")
    return f"an EoMT on {vit}", "choose eomt_vit_small (384 channels), eomt_vit_base (768) or eomt_vit_large (1024)"


# ---------------------------------------------------------------------------------------------- published weights
EOMT_LICENCE = ("MIT (the EoMT code and weights, tue-mps/eomt); the DINOv2 weights it started from Apache-2.0; "
                "the dataset's terms apply")
EOMT_METRICS = "the EoMT model zoo (model_zoo/dinov2.md; the paper's Tables), single scale"
_DATASETS = {  # tag -> (dataset, classes, num_stuff, metric)
    "coco_panoptic_1280": ("COCO panoptic train2017 (133 categories: 80 things, then 53 stuff)", COCO_PANOPTIC, 53,
                           "pq"),
    "coco_instance_1280": ("COCO train2017 instances (80 categories)", COCO_80, 0, "mask_map"),
    "coco_panoptic": ("COCO panoptic train2017 (133 categories: 80 things, then 53 stuff)", COCO_PANOPTIC, 53, "pq"),
    "coco_instance": ("COCO train2017 instances (80 categories)", COCO_80, 0, "mask_map"),
    "ade": ("ADE20K (150 classes)", ADE20K_CLASSES, 0, "miou"),
    "cityscapes": ("Cityscapes (19 train ids)", CITYSCAPES_CLASSES, 0, "miou"),
}


def _eomt(vit: str, tag: str, repo: str, metric: float, size: int, note: str = "") -> WeightsEntry:
    dataset, classes, stuff, name = _DATASETS[tag]
    return WeightsEntry(
        model=f"eomt_vit_{vit}", tag=tag, source="huggingface", converter="huggingface", hf_repo=f"tue-mps/{repo}",
        dataset=f"{dataset}; {size} x {size} input{note}", classes=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        metrics=((name, metric),), metric_source=EOMT_METRICS + ("; AP with pycocotools" if name == "mask_map" else ""),
        licence=EOMT_LICENCE, file_name=f"eomt_vit_{vit}.{tag}.bin", page=f"https://huggingface.co/tue-mps/{repo}",
        convert_kwargs=(("num_stuff", stuff),) if stuff else ())


WEIGHTS = (
    _eomt("small", "coco_panoptic", "coco_panoptic_eomt_small_640_2x", 46.7, 640, "; 2x schedule"),
    _eomt("base", "coco_panoptic", "coco_panoptic_eomt_base_640_2x", 51.6, 640, "; 2x schedule"),
    _eomt("large", "coco_panoptic", "coco_panoptic_eomt_large_640", 56.0, 640),
    _eomt("large", "coco_panoptic_1280", "coco_panoptic_eomt_large_1280", 58.3, 1280),
    _eomt("large", "coco_instance", "coco_instance_eomt_large_640", 45.2, 640),
    _eomt("large", "coco_instance_1280", "coco_instance_eomt_large_1280", 48.8, 1280),
    _eomt("large", "ade", "ade20k_semantic_eomt_large_512", 58.4, 512),
    _eomt("large", "cityscapes", "cityscapes_semantic_eomt_large_1024", 84.2, 1024),
)
