"""Panoptic FPN: the batched merge against detectron2's sequential rule, the semantic head's layout,
the targets it derives, the output format and the class convention."""

from __future__ import annotations

import pytest
import torch

import segzoo
from segzoo.detection.panoptic import combine_panoptic
from segzoo.models.panoptic_fpn import SemanticFPNHead


def _reference(masks, scores, labels, semantic, num_things, num_stuff, overlap, area_thresh, score_thresh):
    """detectron2's combine_semantic_and_instance_outputs for one image, written as its loop."""
    seg = torch.zeros(semantic.shape, dtype=torch.int64)
    info, current = [], 0
    for i in torch.argsort(-scores, stable=True).tolist():
        if scores[i] < score_thresh:
            break
        mask = masks[i]
        area = int(mask.sum())
        if area == 0:
            continue
        inter = int((mask & (seg > 0)).sum())
        if inter / area > overlap:
            continue
        mask = mask & (seg == 0)
        current += 1
        seg[mask] = current
        info.append((current, int(labels[i])))
    for s in torch.unique(semantic).tolist():
        if s <= 0 or s > num_stuff:
            continue
        mask = (semantic == s) & (seg == 0)
        if int(mask.sum()) < area_thresh or not mask.any():
            continue
        current += 1
        seg[mask] = current
        info.append((current, num_things + s - 1))
    return seg, info


@pytest.mark.parametrize("seed", range(4))
def test_batched_merge_matches_the_sequential_rule(seed):
    g = torch.Generator().manual_seed(seed)
    n, k, h, w, things, stuff = 3, 7, 20, 24, 4, 3
    masks = torch.zeros(n, k, h, w, dtype=torch.bool)
    for b in range(n):
        for i in range(k):
            y, x = (int(v) for v in torch.randint(0, 14, (2,), generator=g))
            dy, dx = (int(v) for v in torch.randint(2, 10, (2,), generator=g))
            masks[b, i, y:y + dy, x:x + dx] = True
    masks[0, 3] = False  # an empty mask
    scores = torch.rand(n, k, generator=g).sort(1, descending=True).values
    scores[2, -2:] = -1  # padding rows
    labels = torch.randint(0, things, (n, k), generator=g)
    semantic = torch.randint(0, stuff + 1, (n, h, w), generator=g)
    semantic[:, :, :6] = 1  # a large stuff region
    semantic[1, -3:] = -1  # padding of a smaller image: never painted
    probs = torch.rand(n, h, w, generator=g)
    out = combine_panoptic(masks, scores, labels, semantic, probs, num_things=things, num_stuff=stuff,
                           overlap_thresh=0.5, stuff_area_thresh=12, score_thresh=0.3)
    for b in range(n):
        ref_seg, ref_info = _reference(masks[b], scores[b], labels[b], semantic[b], things, stuff, 0.5, 12, 0.3)
        assert torch.equal(out["segments"][b].long(), ref_seg)
        num = int(out["num_segments"][b])
        assert num == len(ref_info) > 0
        assert out["labels"][b, :num].tolist() == [c for _, c in ref_info]
        assert (out["labels"][b, num:] == -1).all()
        areas = torch.bincount(ref_seg.flatten(), minlength=num + 1)[1:]
        assert out["areas"][b, :num].tolist() == areas.tolist()
        for r, (sid, cat) in enumerate(ref_info):  # scores: the instance's; stuff: mean probability
            if cat >= things:
                expected = float(probs[b][ref_seg == sid].mean())
                assert float(out["scores"][b, r]) == pytest.approx(expected, rel=1e-5)
    assert out["segments"].dtype == torch.int32


def test_overlap_threshold_is_a_fraction_of_the_mask():
    masks = torch.zeros(1, 2, 4, 10, dtype=torch.bool)
    masks[0, 0, :, :5] = True  # 20 px
    masks[0, 1, :, 3:8] = True  # 20 px, 8 of them taken: 0.4 <= 0.5, kept with its 12 free pixels
    out = combine_panoptic(masks, torch.tensor([[0.9, 0.8]]), torch.tensor([[0, 1]]),
                           torch.zeros(1, 4, 10, dtype=torch.int64), torch.ones(1, 4, 10), num_things=2, num_stuff=1,
                           overlap_thresh=0.5, stuff_area_thresh=1, score_thresh=0.5)
    assert out["areas"][0, :2].tolist() == [20, 12]
    out = combine_panoptic(masks, torch.tensor([[0.9, 0.8]]), torch.tensor([[0, 1]]),
                           torch.zeros(1, 4, 10, dtype=torch.int64), torch.ones(1, 4, 10), num_things=2, num_stuff=1,
                           overlap_thresh=0.3, stuff_area_thresh=1, score_thresh=0.5)
    assert int(out["num_segments"][0]) == 1  # 0.4 > 0.3: dropped


def test_semantic_head_layout():
    head = SemanticFPNHead(64, (4, 8, 16, 32), num_classes=5, channels=32)
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in h) for h in head.scale_heads]
    ups = [sum(isinstance(m, torch.nn.Upsample) for m in h) for h in head.scale_heads]
    assert convs == [1, 1, 2, 3] and ups == [0, 1, 2, 3]
    assert all(isinstance(h[1], torch.nn.GroupNorm) and h[0].bias is None for h in head.scale_heads)
    feats = [torch.rand(2, 64, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert head(feats).shape == (2, 5, 16, 24)
    with pytest.raises(ValueError, match="multiple of 32"):
        SemanticFPNHead(64, (4, 8), 3, channels=48)


def _small(**kw):
    args = dict(num_classes=5, num_stuff=2, fpn_channels=32, sem_seg_channels=32, representation_size=64,
                mask_layers=(32,), rpn_batch_size_per_image=32, box_batch_size_per_image=32,
                combine_stuff_area_thresh=16)
    return segzoo.build("panoptic_fpn_resnet18", **{**args, **kw})


def _target(h=64, w=64):
    masks = torch.zeros(4, h, w)
    masks[0, : h // 2] = 1  # stuff 3
    masks[1, h // 2 :] = 1  # stuff 4
    masks[2, 4:20, 4:20] = 1  # thing 0
    masks[3, 40:60, 30:50] = 1  # a crowd of thing 2
    masks[0] *= 1 - masks[2]
    masks[1] *= 1 - masks[3]
    masks[1, h - 2 :] = 0  # a void band
    boxes = torch.tensor([[0, 0, w, h // 2], [0, h // 2, w, h - 2], [4, 4, 20, 20], [30, 40, 50, 60]]).float()
    return {"boxes": boxes, "labels": torch.tensor([3, 4, 0, 2]), "masks": masks, "iscrowd": torch.tensor([0, 0, 0, 1])}


def test_targets_give_the_semantic_map_and_the_instance_targets():
    model = _small()
    t = _target()
    checked = model.check_targets([t, t], [(64, 64), (64, 64)])
    padded = model._pad_targets(checked, (64, 64))
    sem = padded["semantic"][0]
    assert int(sem[0, 0]) == 1 and int(sem[63 - 2, 0]) == 2  # stuff 3 -> 1, stuff 4 -> 2 (0 is "things")
    assert int(sem[10, 10]) == 0 and int(sem[50, 40]) == 0  # a thing and a crowd thing: "things"
    assert (padded["semantic"][:, 62:] == 255).all()  # void
    assert padded["valid"].tolist() == [[False, False, True, False]] * 2  # only the non-crowd thing
    with pytest.raises(ValueError, match="iscrowd"):
        model.check_targets([{**t, "iscrowd": torch.tensor([0, 1])}], [(64, 64)])
    with pytest.raises(ValueError, match="num_classes=5"):
        model.check_targets([{**t, "labels": torch.tensor([3, 5, 0, 2])}], [(64, 64)])


def test_training_step_and_outputs():
    torch.manual_seed(0)
    model = _small()
    losses = model(torch.rand(2, 3, 64, 64), [_target(), _target()])
    assert {"loss_sem_seg", "loss_mask", "loss_classifier", "loss"} <= set(losses)
    instance = sum(v for k, v in losses.items() if k not in ("loss", "loss_sem_seg"))
    torch.testing.assert_close(losses["loss"], instance + 0.5 * losses["loss_sem_seg"])
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64), torch.rand(3, 40, 56)])
    for o, (h, w) in zip(out, [(64, 64), (40, 56)]):
        seg, info = o["segments"], o["segments_info"]
        assert seg.shape == (h, w) and seg.dtype == torch.int32 and o["masks"].shape[-2:] == (h, w)
        assert [s["id"] for s in info] == list(range(1, len(info) + 1))
        areas = torch.bincount(seg.flatten().long(), minlength=len(info) + 1)
        assert [s["area"] for s in info] == areas[1:].tolist() and int(seg.max()) <= len(info)
        assert all(s["is_thing"] == (s["category"] < 3) and 0 <= s["category"] < 5 for s in info)


def test_class_convention_is_checked():
    with pytest.raises(ValueError, match="num_stuff"):
        _small(num_classes=3, num_stuff=3)
    with pytest.raises(ValueError, match="num_stuff"):
        _small(num_stuff=0)
    model = _small()
    assert (model.num_classes, model.num_things, model.num_stuff) == (5, 3, 2)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 things + background
    assert model.sem_seg_head.predictor.out_channels == 3  # "things" + 2 stuff
    assert segzoo.list_models("panoptic*", task="panoptic") == ["panoptic_fpn_mobilenetv2", "panoptic_fpn_resnet18",
                                                              "panoptic_fpn_resnet50"]


def test_exportable_gives_the_segments_of_eager_inference():
    """The fixed-size export path (``exportable()``) and ``model(images)`` give the same segments and table."""
    torch.manual_seed(0)
    model = _small(combine_score_thresh=0.0).eval()
    with torch.no_grad():  # spread the class scores so that the instances are many and well ordered
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
        model.roi_heads.box_predictor.cls_score.bias.normal_(0, 1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        eager = model(x)
        seg, labels, scores, areas, num = model.exportable(max_detections=100)(x)
    assert seg.shape == (2, 64, 64) and labels.shape == (2, 100 + 2)
    for i, out in enumerate(eager):
        info = out["segments_info"]
        assert len(info) > 2 and int(num[i]) == len(info)
        assert torch.equal(seg[i], out["segments"])
        assert labels[i, : len(info)].tolist() == [s["category"] for s in info]
        assert areas[i, : len(info)].tolist() == [s["area"] for s in info]
        torch.testing.assert_close(scores[i, : len(info)], torch.tensor([s["score"] for s in info]))
        assert bool((labels[i, len(info):] == -1).all())
