"""Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image
Segmentation", CVPR 2022) on any timm body: one model, one forward, semantic + instance +
panoptic predictions.

- Pixel decoder (:class:`MSDeformAttnPixelDecoder`): the body's stride 8-32 maps, projected to
  ``dim`` channels, go through ``encoder_layers`` multi-scale deformable-attention layers
  (:class:`~segzoo.layers.deform_attn.MSDeformAttn`, pure PyTorch); an FPN step adds the
  stride-4 map and a 1x1 conv gives the ``mask_dim`` per-pixel embeddings.
- Transformer decoder (:class:`MaskedAttentionDecoder`): ``num_queries`` learned queries; each of
  ``decoder_layers`` layers (9 in the paper) does masked cross-attention to one scale (coarse to
  fine, round robin), self-attention and an FFN (post-norm). Masked attention: a query attends
  only to the pixels where its previous mask prediction is above 0.5 (all pixels when that is
  empty). Every layer (and the queries before the first) predicts class logits (``C + 1``, the
  last "no object") and mask logits (query embedding x pixel embeddings).
- Training: :class:`~segzoo.setpred.SetCriterion` on every prediction (deep supervision).
- Inference: :mod:`segzoo.setpred.merge`.

The layout and arithmetic follow the paper's code; ``from_hf_mask2former`` maps Hugging Face's
``Mask2FormerForUniversalSegmentation`` state dict onto it key for key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones import make_backbone
from segzoo.backbones.swin import pad_before_shift
from segzoo.backbones.timm import TimmBackbone
from segzoo.hub.published import register_weights
from segzoo.layers.deform_attn import MSDeformAttn
from segzoo.layers.position import sine_position_embedding
from segzoo.models.converters import HUGGINGFACE, KeyMap, register_key_map
from segzoo.models.detection_base import DetectionModel, image_shapes
from segzoo.models.mask2former_hf import (  # noqa: F401 (hf_build_kwargs, map_hf_state_dict: re-exported)
    SWIN_ANY_SIZE,
    WEIGHTS,
    describe_hf,
    hf_build_kwargs,
    hf_implied_kwargs,
    map_hf,
    map_hf_state_dict,
)
from segzoo.registry import register_model
from segzoo.setpred import SetCriterion, merge_all, set_targets


def _gn_conv(cin: int, cout: int, k: int, bias: bool, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias), nn.GroupNorm(32, cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class DeformEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then an FFN; post-norm."""

    def __init__(self, dim: int, heads: int, ffn: int, levels: int, points: int = 4) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, heads, levels, points)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x + pos, reference, x, shapes))
        return self.norm2(x + self.fc2(F.relu(self.fc1(x))))


class MSDeformAttnPixelDecoder(nn.Module):
    """Multi-scale deformable-attention pixel decoder.

    ``forward(features)`` with the body's maps (strides ascending, the last ``levels`` of them at
    strides 8-32 for the paper) returns ``mask_features`` (``B x mask_dim x H/4 x W/4``) and the
    ``levels`` encoded maps, coarsest first, for the transformer decoder.
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], *, dim: int = 256, mask_dim: int = 256,
                 heads: int = 8, layers: int = 6, ffn: int = 1024, levels: int = 3, common_stride: int = 4) -> None:
        super().__init__()
        if len(in_channels) < levels:
            raise ValueError(f"the pixel decoder needs {levels} feature maps or more, got {len(in_channels)}")
        self.levels = levels
        self.dim = dim
        # coarsest first: input_proj[i] projects features[-1 - i]
        self.input_proj = nn.ModuleList(_gn_conv(c, dim, 1, True, False) for c in list(in_channels)[::-1][:levels])
        self.level_embed = nn.Parameter(torch.randn(levels, dim))
        self.layers = nn.ModuleList(DeformEncoderLayer(dim, heads, ffn, levels) for _ in range(layers))
        finest = min(strides[-levels:])
        self.num_fpn = int(round(math.log2(finest) - math.log2(common_stride)))
        # lateral[i]/output[i] refine with features[i] (finest first), applied coarse to fine
        self.lateral = nn.ModuleList(_gn_conv(c, dim, 1, False, False) for c in in_channels[: self.num_fpn])
        self.output = nn.ModuleList(_gn_conv(dim, dim, 3, False, True) for _ in range(self.num_fpn))
        self.mask_proj = nn.Conv2d(dim, mask_dim, 1)
        for seq in self.input_proj:
            nn.init.xavier_uniform_(seq[0].weight)
            nn.init.zeros_(seq[0].bias)

    @staticmethod
    def reference_points(shapes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``1 x S x 1 x 2``: the centre of each flattened pixel, ``(x, y)`` in ``[0, 1]``."""
        refs = []
        for h, w in shapes:
            y, x = torch.meshgrid((torch.arange(h, device=device, dtype=dtype) + 0.5) / h,  # arange: any size
                                  (torch.arange(w, device=device, dtype=dtype) + 0.5) / w, indexing="ij")  # exports

            refs.append(torch.stack([x.reshape(-1), y.reshape(-1)], -1))
        return torch.cat(refs)[None, :, None]

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        coarse = list(features)[::-1][: self.levels]  # strides 32, 16, 8
        srcs, pos, shapes = [], [], []
        for i, f in enumerate(coarse):
            h, w = f.shape[-2:]
            shapes.append((h, w))  # ints, or symbolic sizes under torch.export
            srcs.append(self.input_proj[i](f).flatten(2).transpose(1, 2))  # (B, h*w, dim)
            p = sine_position_embedding(h, w, self.dim // 2, f.device, f.dtype).flatten(2).transpose(1, 2)
            pos.append(p + self.level_embed[i].view(1, 1, -1))
        x, pos = torch.cat(srcs, 1), torch.cat(pos, 1)
        ref = self.reference_points(shapes, x.device, x.dtype).expand(-1, -1, self.levels, -1)
        for layer in self.layers:
            x = layer(x, pos, ref, shapes)
        b = x.shape[0]
        outs = [t.transpose(1, 2).reshape(b, self.dim, h, w) for t, (h, w) in zip(x.split([h * w for h, w in shapes],
                                                                                           1), shapes)]
        y = outs[-1]
        for i in reversed(range(self.num_fpn)):  # stride 8 -> 4
            lat = self.lateral[i](features[i])
            y = self.output[i](lat + F.interpolate(y, size=lat.shape[-2:], mode="bilinear", align_corners=False))
        return self.mask_proj(y), outs


class MaskedDecoderLayer(nn.Module):
    """Masked cross-attention, self-attention, FFN; post-norm (the paper's order)."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_self = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                attn_mask: torch.Tensor) -> torch.Tensor:
        a = self.cross_attn(q + query_pos, memory + memory_pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        q = self.norm_cross(q + a)
        k = q + query_pos
        q = self.norm_self(q + self.self_attn(k, k, q, need_weights=False)[0])
        return self.norm_ffn(q + self.fc2(F.relu(self.fc1(q))))


class MaskedAttentionDecoder(nn.Module):
    """The transformer decoder and its prediction heads.

    ``forward(multi_scale, mask_features)`` returns the ``layers + 1`` predictions
    ``(class_logits B x Q x (C + 1), mask_logits B x Q x H/4 x W/4)``, the last the final one.
    """

    def __init__(self, num_classes: int, *, in_dim: int = 256, dim: int = 256, mask_dim: int = 256, heads: int = 8,
                 layers: int = 9, ffn: int = 2048, num_queries: int = 100, levels: int = 3) -> None:
        super().__init__()
        self.heads, self.levels = heads, levels
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(levels, dim)
        self.input_proj = nn.ModuleList(nn.Conv2d(in_dim, dim, 1) if in_dim != dim else nn.Identity()
                                        for _ in range(levels))
        self.layers = nn.ModuleList(MaskedDecoderLayer(dim, heads, ffn) for _ in range(layers))
        self.final_only = False  # fold_for_inference: eval computes the final prediction only
        self.norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                        nn.Linear(dim, mask_dim))
        for layer in self.layers:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def fold_for_inference(self) -> bool:
        """For eval: the layers' intermediate predictions, which inference only reads for the next
        layer's attention mask, computed on the mask features resized to that layer's grid
        (resizing is linear per channel, so it commutes with the query-pixel products): a
        ``Q x h x w`` product per layer instead of ``Q x H/4 x W/4`` and its resize. The forward then
        returns the final prediction only. Exact to float rounding; training is unchanged."""
        self.final_only = True
        return True

    def _blocked(self, q: torch.Tensor, small_features: torch.Tensor) -> torch.Tensor:
        """:meth:`predict`'s attention mask from mask features already at the next layer's grid."""
        small = torch.einsum("bqc,bchw->bqhw", self.mask_embed(self.norm(q)), small_features)
        blocked = small.sigmoid().flatten(2) < 0.5
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        return blocked.repeat_interleave(self.heads, dim=0)

    def predict(self, q: torch.Tensor, mask_features: torch.Tensor, size: Sequence[int]):
        """Class and mask logits of queries ``q``, and the attention mask for the next layer at
        ``size`` (``B * heads x Q x h * w``, True where a query may not attend)."""
        x = self.norm(q)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)
        small = F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
        blocked = (small.sigmoid().flatten(2) < 0.5).detach()  # (B, Q, h*w)
        blocked = blocked & ~blocked.all(-1, keepdim=True)  # a query with an empty mask attends everywhere
        return self.class_embed(x), masks, blocked.repeat_interleave(self.heads, dim=0)

    def forward(self, multi_scale: Sequence[torch.Tensor], mask_features: torch.Tensor):
        memory, pos, sizes = [], [], []
        for i, f in enumerate(multi_scale):
            h, w = f.shape[-2:]
            sizes.append((h, w))
            memory.append(self.input_proj[i](f).flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            pos.append(sine_position_embedding(h, w, self.query_feat.embedding_dim // 2, f.device,
                                               f.dtype).flatten(2).transpose(1, 2))
        b = mask_features.shape[0]
        q = self.query_feat.weight[None].expand(b, -1, -1)
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        if self.final_only and not self.training:
            small = [F.interpolate(mask_features, size=s, mode="bilinear", align_corners=False) for s in sizes]
            blocked = self._blocked(q, small[0])
            for i, layer in enumerate(self.layers):
                q = layer(q, query_pos, memory[i % self.levels], pos[i % self.levels], blocked)
                if i < len(self.layers) - 1:
                    blocked = self._blocked(q, small[(i + 1) % self.levels])
            cls, msk, _ = self.predict(q, mask_features, sizes[len(self.layers) % self.levels])
            return [(cls, msk)]
        cls, msk, blocked = self.predict(q, mask_features, sizes[0])
        preds = [(cls, msk)]
        for i, layer in enumerate(self.layers):
            lvl = i % self.levels
            q = layer(q, query_pos, memory[lvl], pos[lvl], blocked)
            cls, msk, blocked = self.predict(q, mask_features, sizes[(i + 1) % self.levels])
            preds.append((cls, msk))
        return preds


class Mask2Former(DetectionModel):
    """Mask2Former: one forward gives the semantic, instance and panoptic predictions.

    Input: as every segzoo model (float RGB ``N x 3 x H x W`` in [0, 1] or a list of ``3 x H x
    W``), padded inside to a multiple of 32. Output: one dict per image with

    - ``sem_seg``: ``C x H x W`` class scores (:func:`~segzoo.setpred.semantic_merge`; argmax
      is the semantic map);
    - ``boxes``, ``scores``, ``labels``, ``masks``: the ``topk`` instances
      (:func:`~segzoo.setpred.instance_merge`; thing classes only when ``num_stuff > 0``);
    - ``segments``, ``segments_info``: the panoptic segmentation
      (:func:`~segzoo.setpred.panoptic_merge`).

    With ``targets`` (one dict per image: ``labels`` K in ``[0, num_classes)``, ``masks``
    K x H x W, optional ``iscrowd`` K: crowd segments are left out; an instance or panoptic
    target gives one mask per object or segment, :func:`~segzoo.setpred.semantic_to_set_targets`
    one per class present of a semantic map) the output is
    :class:`~segzoo.setpred.SetCriterion`'s losses over all ``decoder_layers + 1`` predictions.

    Args:
        num_classes: every category, things first (133 for COCO panoptic, 150 for ADE20K).
        num_stuff: how many of them (the last ones) are stuff.
        backbone: a timm model name (features at strides 4, 8, 16, 32).
        backbone_kwargs: keyword arguments for ``timm.create_model`` (Swin: ``dynamic_img_size=True``
            for any input size, ``always_partition=True`` for shifted windows in every stage, as the
            paper's Swin; ``embed_dim``, ``depths``, ``num_heads``, ``window_size`` for other sizes).
            timm Swin blocks are made to pad to whole windows before their cyclic shift
            (:func:`~segzoo.backbones.swin.pad_before_shift`), as the paper's code.
        out_norm_eps: a LayerNorm on each body map with this epsilon (the paper's Swin and Hugging
            Face's ``SwinBackbone``: 1e-5); None: none (ResNet).
        dim, mask_dim: pixel decoder / transformer width and mask embedding width (256).
        encoder_layers, encoder_ffn: deformable encoder depth and FFN width (6, 1024).
        decoder_layers, decoder_ffn, heads: transformer decoder depth (9), FFN width (2048), heads (8).
        num_queries: 100 (COCO/ADE20K semantic), 200 (ADE20K panoptic, Swin-L).
        class_weight, mask_weight, dice_weight, no_object_weight, num_points: the loss (2, 5, 5, 0.1, 12544).
        score_thresh, overlap_thresh: panoptic merge (0.8, 0.8).
        topk: instances per image: the best ``topk`` (query, class) pairs (100, the paper's
            ``DETECTIONS_PER_IMAGE``; at most ``num_queries * num_classes``).
    """

    task = "universal"  # segzoo.tasks.UniversalTask: scored as every task the data supports
    tasks = ("semantic", "instance", "panoptic")  # what one forward predicts (see docs/models/mask2former.md)
    counts = "every category: thing classes first, then the num_stuff stuff classes"
    class_layers = ("decoder.class_embed",)
    size_divisibility = 32

    def __init__(self, num_classes: int = 133, *, num_stuff: int = 0, backbone: str = "resnet50",
                 backbone_weights: str | None = None, backbone_kwargs: dict | None = None,
                 out_norm_eps: float | None = None, dim: int = 256, mask_dim: int = 256, heads: int = 8,
                 encoder_layers: int = 6, encoder_ffn: int = 1024, decoder_layers: int = 9, decoder_ffn: int = 2048,
                 num_queries: int = 100, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 score_thresh: float = 0.8, overlap_thresh: float = 0.8, topk: int | None = None) -> None:
        super().__init__(num_classes)
        if isinstance(num_stuff, bool) or not isinstance(num_stuff, int) or not 0 <= num_stuff <= self.num_classes:
            raise ValueError(f"num_stuff must be an int in [0, num_classes={self.num_classes}], got {num_stuff!r}")
        if dim % 32 or dim % heads:
            raise ValueError(f"dim must be a multiple of 32 (GroupNorm) and of heads={heads}, got {dim}")
        self.num_stuff = num_stuff
        self.num_things = self.num_classes - num_stuff
        self.backbone_name = backbone
        if backbone_kwargs:
            self.backbone = TimmBackbone(backbone, out_indices=(-4, -3, -2, -1), weights=backbone_weights,
                                         **backbone_kwargs)
        else:
            self.backbone = make_backbone(backbone, weights=backbone_weights, levels=4)
        if tuple(self.backbone.strides) != (4, 8, 16, 32):
            raise ValueError(f"Mask2Former needs a body with features at strides 4, 8, 16, 32; {backbone} gives "
                             f"{tuple(self.backbone.strides)}")
        pad_before_shift(self.backbone)  # Swin: the paper's window order (a no-op for other bodies)
        self.out_norms = (nn.ModuleList(nn.LayerNorm(c, eps=out_norm_eps) for c in self.backbone.channels)
                          if out_norm_eps is not None else None)
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            self.backbone.channels, self.backbone.strides, dim=dim, mask_dim=mask_dim, heads=heads,
            layers=encoder_layers, ffn=encoder_ffn)
        self.decoder = MaskedAttentionDecoder(
            self.num_classes, in_dim=dim, dim=dim, mask_dim=mask_dim, heads=heads, layers=decoder_layers,
            ffn=decoder_ffn, num_queries=num_queries)
        self.criterion = SetCriterion(
            self.num_classes, class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight,
            no_object_weight=no_object_weight, num_points=num_points)
        self.score_thresh, self.overlap_thresh = float(score_thresh), float(overlap_thresh)
        self.topk = 100 if topk is None else topk  # the paper's code: 100 (query, class) pairs per image
        things = torch.arange(self.num_classes) < self.num_things
        self.register_buffer("thing_classes", things, persistent=False)

    def forward_logits(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder prediction ``(class_logits, mask_logits)`` of a normalised batch ``x``."""
        feats = []
        for i, (f, c) in enumerate(zip(self.backbone(x), self.backbone.channels)):
            nhwc = f.shape[1] != c  # timm's NHWC bodies (Swin)
            if self.out_norms is not None:
                f = self.out_norms[i](f if nhwc else f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, h, w)
            elif nhwc:
                f = f.permute(0, 3, 1, 2)
            feats.append(f)
        mask_features, multi_scale = self.pixel_decoder(feats)
        return self.decoder(multi_scale, mask_features)

    export_kind = "set"  # segzoo.export: outputs (class_logits, mask_logits), any H and W
    dynamic_export = True

    def exportable(self, max_detections: int | None = None) -> SetPredictionExport:
        """The module ``segzoo.export`` exports (``max_detections`` does not apply): see
        :class:`SetPredictionExport`."""
        return SetPredictionExport(self)

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor],
                targets: Sequence[dict] | None = None) -> list[dict] | dict[str, torch.Tensor]:
        if self.is_empty(images):
            return self.empty_result(targets)
        shapes = image_shapes(images)
        x, _ = self.preprocess(images)
        preds = self.forward_logits(x)
        if targets is not None:
            targets = set_targets(targets, self.num_classes)  # label maps: one mask per class present
            for i, (t, (h, w)) in enumerate(zip(targets, shapes)):
                if "masks" in t and tuple(t["masks"].shape[-2:]) != (h, w):
                    raise ValueError(f"targets[{i}]['masks'] are {tuple(t['masks'].shape[-2:])} but the image is "
                                     f"{(h, w)}; give masks at the image size")
            (cls, msk), aux = preds[-1], preds[:-1]
            return self.criterion(cls, msk, targets, aux=aux, canvas=tuple(x.shape[-2:]))
        return self.postprocess(*preds[-1], tuple(x.shape[-2:]), shapes)

    def postprocess(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, padded: Sequence[int],
                    shapes: Sequence[tuple[int, int]]) -> list[dict]:
        """The three merges of the final prediction, at each image's size (mask logits resized to the
        padded input, then cropped, as the paper)."""
        if len(set(shapes)) > 1:  # images of several sizes: merge each on its own pixels
            return [self.postprocess(class_logits[i: i + 1], mask_logits[i: i + 1], padded, [s])[0]
                    for i, s in enumerate(shapes)]
        sem, inst, pan = merge_all(  # one pass, a chunk of queries at a time (no Q x H x W masks)
            class_logits, mask_logits, self.thing_classes, topk=self.topk, instance_things=bool(self.num_stuff),
            score_thresh=self.score_thresh, overlap_thresh=self.overlap_thresh, size=tuple(padded),
            crop=tuple(shapes[0]))
        return [{"sem_seg": sem[i], **inst[i], **pan[i]} for i in range(len(shapes))]


class SetPredictionExport(nn.Module):
    """The exported inference path of a set-prediction model (Mask2Former, EoMT): ``N x 3 x H x W``
    images in [0, 1] in, the final prediction out, before the merges::

        class_logits (N, Q, C + 1)   the last column "no object"
        mask_logits  (N, Q, Hp / 4, Wp / 4)   Hp, Wp: H, W padded to size_divisibility

    The merges are post-processing on the host: ``model.postprocess(class_logits, mask_logits,
    (Hp, Wp), [(H, W)] * N)`` gives the dicts of eager ``model(images)``. (They hold Python lists
    of segments, and keeping them out keeps N x Q x H x W masks out of the graph.)
    """

    def __init__(self, model: nn.Module, **logits_kwargs) -> None:
        super().__init__()
        self.model, self.logits_kwargs = model, logits_kwargs

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.model.size_divisibility
        h, w = images.shape[-2:]
        x = F.pad(self.model.normalize(images), (0, (-w) % d, 0, (-h) % d))
        return self.model.forward_logits(x, **self.logits_kwargs)[-1]


# ---------------------------------------------------------------------------------------------- converter
register_key_map(HUGGINGFACE, Mask2Former, KeyMap(map_hf, build_defaults=hf_implied_kwargs, describe=describe_hf))
register_weights(*WEIGHTS)  # the published facebook/mask2former-swin-* checkpoints

# ---------------------------------------------------------------------------------------------- variants
@register_model
def mask2former_resnet50(**kwargs) -> Mask2Former:
    """The paper's R-50 model: 100 queries, 9 decoder layers, 6 encoder layers, width 256."""
    return Mask2Former(**{"backbone": "resnet50", **kwargs})


def _swin(body: str, kwargs: dict) -> Mask2Former:
    return Mask2Former(**{"backbone": body, "backbone_kwargs": dict(SWIN_ANY_SIZE), "out_norm_eps": 1e-5, **kwargs})


@register_model
def mask2former_swin_tiny(**kwargs) -> Mask2Former:
    """Swin-T (timm's ``swin_tiny_patch4_window7_224``) at any input size, shifted windows in every
    stage and a LayerNorm on each map, as the paper's Swin (detectron2's D2SwinTransformer). The other
    Swin sizes: ``backbone="swin_small_patch4_window7_224"`` (or ``swin_base/large_patch4_window12_384``)."""
    return _swin("swin_tiny_patch4_window7_224", kwargs)


@register_model
def mask2former_resnet18_small(**kwargs) -> Mask2Former:
    """A CPU-sized variant for tests and Shapes: width 64, 2 encoder and 3 decoder layers, 20 queries."""
    small = dict(backbone="resnet18", dim=64, mask_dim=64, heads=4, encoder_layers=2, encoder_ffn=128,
                 decoder_layers=3, decoder_ffn=128, num_queries=20, num_points=1024)
    return Mask2Former(**{**small, **kwargs})
