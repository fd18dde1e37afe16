"""EoMT (Kerssies et al., "Your ViT is Secretly an Image Segmentation Model", CVPR 2025) on a timm
ViT: one model, one forward, semantic + instance + panoptic predictions, no pixel decoder.

- The ViT (timm, DINOv2 layout by default: class token, register tokens, patch-only position
  embedding, layer scale) runs its first ``L - num_blocks`` blocks on the image tokens as usual.
- ``num_queries`` learned query tokens are prepended before block ``L - num_blocks`` and go
  through the last ``num_blocks`` blocks together with the image tokens (joint self-attention).
- Mask module: after the final norm, the query tokens give class logits (``C + 1``, the last
  "no object", a linear layer) and mask embeddings (a 3-layer MLP); the patch tokens, reshaped to
  the ``H/p x W/p`` grid, go through ``upscale_blocks`` upscale blocks (2x2 transposed conv, GELU,
  depthwise 3x3 conv, LayerNorm; two of them take stride 16 to 4); mask logits are the dot
  products of the two.
- Masked attention (training): before each of the last ``num_blocks`` blocks the mask module
  predicts from the current tokens (deep supervision) and a query may attend only to the patches
  where its mask logit, resized to the grid, is positive (queries and prefix tokens are always
  visible). ``attn_mask_probs[i]`` is the probability that block ``i``'s mask is applied to a
  query; the paper anneals it from 1 to 0 during training (:meth:`EoMT.anneal`,
  :func:`mask_annealing`), so the finished model runs as a plain ViT. A block whose probability
  is 0 computes no mask and, at inference, no intermediate prediction.
- Training: :class:`~segzoo.setpred.SetCriterion` on every prediction; inference: the merges of
  :mod:`segzoo.setpred.merge` (the same as Mask2Former's).

``map_hf_state_dict`` maps Hugging Face's ``EomtForUniversalSegmentation`` state dict onto it key
for key (the published ``tue-mps/*eomt*`` checkpoints use that layout).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from segzoo.hub.published import register_weights
from segzoo.models.converters import HUGGINGFACE, KeyMap, register_key_map
from segzoo.models.detection_base import DetectionModel, image_shapes
from segzoo.models.eomt_hf import (  # noqa: F401 (hf_build_kwargs, map_hf_state_dict: re-exported)
    WEIGHTS,
    describe_hf,
    hf_build_kwargs,
    implied_kwargs,
    map_hf,
    map_hf_state_dict,
)
from segzoo.models.mask2former import Mask2Former, SetPredictionExport
from segzoo.registry import register_model
from segzoo.setpred import SetCriterion, set_targets


def mask_annealing(step: int, start: int, end: int, power: float = 0.9) -> float:
    """The paper's masked-attention probability at training ``step`` for a block annealed over
    ``[start, end)``: 1 before ``start``, ``(1 - (step - start) / (end - start)) ** power`` within,
    0 from ``end`` on."""
    if end <= start:
        raise ValueError(f"the annealing window must have end > start, got start={start}, end={end}")
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return (1.0 - (step - start) / (end - start)) ** power


def default_anneal_steps(total_steps: int, num_blocks: int) -> list[tuple[int, int]]:
    """Block ``i``'s annealing window ``[(i + 1) T / (B + 2), (i + 2) T / (B + 2))`` of ``T = total_steps``
    (the official COCO schedule: 4 blocks in consecutive sixths of the run), each at least one step long."""
    out = []
    for i in range(num_blocks):
        start = (i + 1) * total_steps // (num_blocks + 2)
        out.append((start, max(start + 1, (i + 2) * total_steps // (num_blocks + 2))))
    return out


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``N x C x H x W`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class UpscaleBlock(nn.Module):
    """2x upsampling: 2x2 transposed conv, GELU, depthwise 3x3 conv (no bias), LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.act = nn.GELU()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dw(self.act(self.up(x))))


class EoMT(DetectionModel):
    """EoMT: one forward gives the semantic, instance and panoptic predictions (the outputs and
    targets of :class:`~segzoo.models.mask2former.Mask2Former`).

    Input: float RGB ``N x 3 x H x W`` in [0, 1] (or a list of ``3 x H x W``), any size: padded
    inside to a multiple of the patch size; the position embedding is resized (bicubic, timm's
    ``dynamic_img_size``) when the grid differs from ``img_size / patch_size``.

    Args:
        num_classes: every category, things first; ``num_stuff``: how many (the last ones) are stuff.
        backbone: a timm ViT (``vit_large_patch14_reg4_dinov2`` for the paper's ViT-L/DINOv2).
        patch_size, img_size: passed to timm (16 and 640 for the published COCO models; timm resizes
            a pretrained patch embedding to ``patch_size``).
        backbone_weights: timm pretrained weights (``True``) or a file; None: random.
        backbone_kwargs: further ``timm.create_model`` arguments (``embed_dim``, ``depth``, ... for
            small test models).
        num_queries: 200 (COCO panoptic), 100 (ADE20K semantic).
        num_blocks: how many final blocks see the queries (4).
        upscale_blocks: 2x upscale blocks of the mask module (``log2(patch_size / 4)``: 2 for p=16).
        class_weight, mask_weight, dice_weight, no_object_weight, num_points, oversample_ratio,
        importance_sample_ratio: the loss (2, 5, 5, 0.1, 12544, 3, 0.75).
        score_thresh, overlap_thresh, topk: the merges (0.8, 0.8, 100 instances at most).
        anneal_steps: ``num_blocks`` ``(start, end)`` training steps over which each block's masked
            attention is annealed by :meth:`anneal` (None: :meth:`anneal` needs them passed).
    """

    task = "universal"  # segzoo.tasks.UniversalTask: scored as every task the data supports
    tasks = ("semantic", "instance", "panoptic")
    counts = "every category: thing classes first, then the num_stuff stuff classes"
    class_layers = ("class_head",)
    postprocess = Mask2Former.postprocess

    def __init__(self, num_classes: int = 133, *, num_stuff: int = 0, backbone: str = "vit_large_patch14_reg4_dinov2",
                 patch_size: int = 16, img_size: int = 640, backbone_weights: bool | str | None = None,
                 backbone_kwargs: dict | None = None, num_queries: int = 200, num_blocks: int = 4,
                 upscale_blocks: int = 2, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75, score_thresh: float = 0.8,
                 overlap_thresh: float = 0.8, topk: int | None = None,
                 anneal_steps: Sequence[tuple[int, int]] | None = None) -> None:
        super().__init__(num_classes)
        if isinstance(num_stuff, bool) or not isinstance(num_stuff, int) or not 0 <= num_stuff <= self.num_classes:
            raise ValueError(f"num_stuff must be an int in [0, num_classes={self.num_classes}], got {num_stuff!r}")
        kwargs = dict(backbone_kwargs or {})
        pretrained = backbone_weights is True
        if isinstance(backbone_weights, str):
            kwargs["pretrained_cfg_overlay"] = dict(file=backbone_weights)
            pretrained = True
        self.vit = timm.create_model(backbone, pretrained=pretrained, num_classes=0, global_pool="",
                                     patch_size=patch_size, img_size=img_size, dynamic_img_size=True, **kwargs)
        depth = len(self.vit.blocks)
        if not 1 <= num_blocks <= depth:
            raise ValueError(f"num_blocks must be in [1, {depth}] (the ViT's depth), got {num_blocks}")
        if upscale_blocks < 0 or patch_size % (2 ** upscale_blocks):
            raise ValueError(f"{upscale_blocks} upscale blocks do not divide patch_size={patch_size}")
        dim = self.vit.embed_dim
        self.num_stuff, self.num_things = num_stuff, self.num_classes - num_stuff
        self.patch_size, self.num_queries, self.num_blocks = int(patch_size), int(num_queries), int(num_blocks)
        self.size_divisibility = self.patch_size
        self.query = nn.Embedding(num_queries, dim)
        self.class_head = nn.Linear(dim, self.num_classes + 1)
        self.mask_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(),
                                       nn.Linear(dim, dim))
        self.upscale = nn.Sequential(*(UpscaleBlock(dim) for _ in range(upscale_blocks)))
        self.final_only = False  # fold_for_inference: eval computes the final prediction only
        self.register_buffer("attn_mask_probs", torch.ones(num_blocks))
        if anneal_steps is not None and len(anneal_steps) != num_blocks:
            raise ValueError(f"anneal_steps needs one (start, end) per block ({num_blocks}), got {len(anneal_steps)}")
        self.anneal_steps = None if anneal_steps is None else tuple(tuple(int(s) for s in p) for p in anneal_steps)
        self.criterion = SetCriterion(
            self.num_classes, class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight,
            no_object_weight=no_object_weight, num_points=num_points, oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio)
        self.score_thresh, self.overlap_thresh = float(score_thresh), float(overlap_thresh)
        self.topk = 100 if topk is None else topk  # official EoMT: 100 (query, class) pairs per image
        self.register_buffer("thing_classes", torch.arange(self.num_classes) < self.num_things, persistent=False)

    # ------------------------------------------------------------------------------------------ training schedule
    def anneal(self, step: int, anneal_steps: Sequence[tuple[int, int]] | None = None) -> list[float]:
        """Set each block's masked-attention probability for training ``step`` (:func:`mask_annealing`
        over its ``(start, end)`` window) and return them."""
        windows = anneal_steps if anneal_steps is not None else self.anneal_steps
        if windows is None or len(windows) != self.num_blocks:
            raise ValueError(f"anneal needs {self.num_blocks} (start, end) windows (anneal_steps=...)")
        probs = [mask_annealing(step, s, e) for s, e in windows]
        self.attn_mask_probs.copy_(torch.tensor(probs))
        return probs

    def train_schedule(self, step: int, total_steps: int) -> list[float]:
        """The trainer's per-step call (through :class:`segzoo.tasks.UniversalTask`): :meth:`anneal` with
        ``anneal_steps``, or by default the paper's COCO layout scaled to the run, block ``i`` annealed over
        ``[(i + 1) T / (B + 2), (i + 2) T / (B + 2))`` of the ``T`` steps (B blocks: sixths for 4), so the
        last sixth trains the plain ViT that inference runs."""
        windows = self.anneal_steps or default_anneal_steps(total_steps, self.num_blocks)
        return self.anneal(step, windows)

    export_kind = "set"  # segzoo.export: outputs (class_logits, mask_logits), any H and W
    dynamic_export = True

    def exportable(self, max_detections: int | None = None) -> SetPredictionExport:
        """The module ``segzoo.export`` exports (see :class:`~segzoo.models.mask2former.SetPredictionExport`),
        with the blocks' masked-attention probabilities as they are now: 0 (a finished model)
        exports a plain ViT, 1 the masked blocks; values in between draw at random and are refused."""
        probs = [float(p) for p in self.attn_mask_probs.tolist()]
        if any(0 < p < 1 for p in probs):
            raise ValueError(f"attn_mask_probs {probs} are mid-annealing (random masks); export a model whose "
                             "probabilities are all 0 or 1 (model.attn_mask_probs.fill_(0.0) after training)")
        return SetPredictionExport(self, probs=probs)

    # ------------------------------------------------------------------------------------------ forward
    def predict(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``B x Q x (C + 1)`` and mask logits ``B x Q x 4h x 4w`` (for p=16) of normed tokens
        laid out as ``[queries, prefix tokens, patches]``."""
        q = tokens[:, : self.num_queries]
        patches = tokens[:, self.num_queries + self.vit.num_prefix_tokens:]
        patches = patches.transpose(1, 2).reshape(patches.shape[0], -1, *grid)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_head(q), self.upscale(patches))
        return self.class_head(q), masks

    def fold_for_inference(self) -> bool:
        """For eval: the masked blocks' intermediate predictions, which inference only reads for the
        attention masks at the patch grid, computed from the upscaled patch features resized to that
        grid (resizing is linear per channel, so it commutes with the query-pixel products): a
        ``Q x h x w`` product per block instead of ``Q x 4h x 4w`` and its resize. ``forward_logits``
        without ``every_block`` then returns the final prediction only. Exact to float rounding;
        training is unchanged."""
        self.final_only = True
        return True

    def _grid_logits(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """:meth:`predict`'s mask logits resized to the patch grid, computed there."""
        q = tokens[:, : self.num_queries]
        patches = tokens[:, self.num_queries + self.vit.num_prefix_tokens:]
        patches = patches.transpose(1, 2).reshape(patches.shape[0], -1, *grid)
        up = F.interpolate(self.upscale(patches), size=grid, mode="bilinear", align_corners=False)
        return torch.einsum("bqc,bchw->bqhw", self.mask_head(q), up)

    def _attn_mask(self, mask_logits: torch.Tensor, grid: tuple[int, int], n: int, prob: float) -> torch.Tensor:
        """``B x 1 x n x n`` boolean (True: may attend): queries see the patches where their mask is positive."""
        b, nq = mask_logits.shape[:2]
        start = nq + self.vit.num_prefix_tokens
        visible = (F.interpolate(mask_logits, size=grid, mode="bilinear", align_corners=False).flatten(2) > 0)
        if prob < 1:  # the annealing: a query drawn with probability 1 - prob sees every patch
            free = torch.rand(b, nq, device=mask_logits.device) > prob
            visible = visible | free[..., None]
        mask = torch.ones(b, n, n, dtype=torch.bool, device=mask_logits.device)
        mask[:, :nq, start:] = visible
        return mask[:, None]

    def forward_logits(self, x: torch.Tensor, every_block: bool = False,
                       probs: Sequence[float] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The predictions ``(class_logits, mask_logits)`` of a normalised, padded batch ``x``: one per
        masked block (every one of the last ``num_blocks`` with ``every_block``, else those whose
        probability is above 0) and the final one, last. ``probs``: the blocks' masked-attention
        probabilities (default ``attn_mask_probs``, read once: one host sync)."""
        vit = self.vit
        probs = [float(p) for p in (self.attn_mask_probs.tolist() if probs is None else probs)]
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        depth = len(vit.blocks)
        first = depth - self.num_blocks
        preds = []
        for i, block in enumerate(vit.blocks):
            if i == first:
                t = torch.cat([self.query.weight[None].expand(t.shape[0], -1, -1), t], 1)
            mask = None
            if i >= first:
                prob = probs[i - first]
                if prob > 0 and not every_block and self.final_only and not self.training:
                    mask = self._attn_mask(self._grid_logits(vit.norm(t), grid), grid, t.shape[1], prob)
                elif every_block or prob > 0:
                    cls, msk = self.predict(vit.norm(t), grid)
                    preds.append((cls, msk))
                    if prob > 0:
                        mask = self._attn_mask(msk.detach(), grid, t.shape[1], prob)
            t = block(t, attn_mask=mask)
        preds.append(self.predict(vit.norm(t), grid))
        return preds

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor],
                targets: Sequence[dict] | None = None) -> list[dict] | dict[str, torch.Tensor]:
        if self.is_empty(images):
            return self.empty_result(targets)
        shapes = image_shapes(images)
        x, _ = self.preprocess(images)
        preds = self.forward_logits(x, every_block=targets is not None)
        if targets is None:
            return self.postprocess(*preds[-1], tuple(x.shape[-2:]), shapes)
        targets = set_targets(targets, self.num_classes)  # label maps: one mask per class present
        for i, (t, (h, w)) in enumerate(zip(targets, shapes)):
            if "masks" in t and tuple(t["masks"].shape[-2:]) != (h, w):
                raise ValueError(f"targets[{i}]['masks'] are {tuple(t['masks'].shape[-2:])} but the image is "
                                 f"{(h, w)}; give masks at the image size")
        losses: dict[str, torch.Tensor] = {}
        total = 0.0
        for i, (cls, msk) in enumerate(preds):  # first block to last, the final prediction unsuffixed
            layer = self.criterion(cls, msk, targets, canvas=tuple(x.shape[-2:]))
            total = total + layer.pop("loss")
            suffix = "" if i == len(preds) - 1 else f"_{i}"
            losses.update({k + suffix: v for k, v in layer.items()})
        losses["loss"] = total
        return losses


# ---------------------------------------------------------------------------------------------- converter
register_key_map(HUGGINGFACE, EoMT, KeyMap(map_hf, build_defaults=implied_kwargs, describe=describe_hf))
register_weights(*WEIGHTS)  # the published tue-mps/*eomt* checkpoints

# ---------------------------------------------------------------------------------------------- variants
@register_model
def eomt_vit_small(**kwargs) -> EoMT:
    """ViT-S/16 (DINOv2 layout with 4 registers), 640 px, 200 queries, 4 query blocks."""
    return EoMT(**{"backbone": "vit_small_patch14_reg4_dinov2", **kwargs})


@register_model
def eomt_vit_base(**kwargs) -> EoMT:
    """ViT-B/16 (DINOv2 layout with 4 registers), 640 px, 200 queries, 4 query blocks."""
    return EoMT(**{"backbone": "vit_base_patch14_reg4_dinov2", **kwargs})


@register_model
def eomt_vit_large(**kwargs) -> EoMT:
    """ViT-L/16 (DINOv2 layout with 4 registers), 640 px, 200 queries, 4 query blocks: the paper's model."""
    return EoMT(**{"backbone": "vit_large_patch14_reg4_dinov2", **kwargs})


@register_model
def eomt_vit_tiny_test(**kwargs) -> EoMT:
    """A CPU-sized variant for tests: width 32, 4 blocks (2 with queries), 2 heads, 8 queries, 64 px layout."""
    small = dict(backbone="vit_small_patch14_reg4_dinov2", img_size=64, num_queries=8, num_blocks=2, num_points=256,
                 backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2))
    return EoMT(**{**small, **kwargs})
