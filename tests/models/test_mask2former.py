"""Mask2Former equals Hugging Face's Mask2FormerForUniversalSegmentation (random weights, a small
config on a timm ResNet-18 or ConvNeXt-atto body, mapped by segzoo's converter): every decoder
layer's class and mask logits, and the training loss; plus segzoo's forward contract."""

from __future__ import annotations

import pytest
import torch

from segzoo.layers.deform_attn import MSDeformAttn
from segzoo.models.mask2former import Mask2Former, hf_build_kwargs, map_hf_state_dict
from tests.models.set_models import check_mixed_sizes_and_backward

transformers = pytest.importorskip("transformers")
pytest.importorskip("scipy")


BODIES = {"resnet18": (1, 2, 3, 4), "convnext_atto": (0, 1, 2, 3)}  # timm indices of strides 4-32


def _pair(body="resnet18", num_labels=5, queries=7, decoder_layers=4, seed=0):
    torch.manual_seed(seed)
    backbone = transformers.TimmBackboneConfig(backbone=body, out_indices=BODIES[body], use_pretrained_backbone=False)
    cfg = transformers.Mask2FormerConfig(
        backbone_config=backbone, num_labels=num_labels, feature_size=64, mask_feature_size=64, hidden_dim=64,
        encoder_feedforward_dim=128, encoder_layers=2, decoder_layers=decoder_layers, num_attention_heads=4,
        dim_feedforward=128, num_queries=queries, train_num_points=400)
    ref = transformers.Mask2FormerForUniversalSegmentation(cfg).eval()
    ours = Mask2Former(backbone=body, **hf_build_kwargs(cfg)).eval()
    ours.load_state_dict(map_hf_state_dict(ref.state_dict()), strict=True)
    return ref, ours


@pytest.fixture(scope="module", params=list(BODIES))
def pair(request):
    return _pair(request.param)


def test_the_converter_maps_every_key_one_to_one(pair):
    ref, ours = pair
    mapped = map_hf_state_dict(ref.state_dict())
    assert set(mapped) == set(ours.state_dict())
    n_ref = sum(v.numel() for k, v in ref.state_dict().items() if not k.startswith("criterion."))
    assert sum(v.numel() for v in mapped.values()) == n_ref


def test_every_layers_logits_equal_hugging_face(pair):
    ref, ours = pair
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        expected = ref(ours.normalize(x), output_auxiliary_logits=True)
        got = ours.forward_logits(ours.normalize(x))
        blocked = ours.decoder.predict(ours.decoder.query_feat.weight[None], torch.randn(1, 64, 24, 32), (3, 4))[2]
    assert len(got) == 4  # the queries' own prediction + 3 layers
    torch.testing.assert_close(got[-1][0], expected.class_queries_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got[-1][1], expected.masks_queries_logits, rtol=0, atol=1e-4)
    for (cls, msk), aux in zip(got[:-1], expected.auxiliary_logits):
        torch.testing.assert_close(cls, aux["class_queries_logits"], rtol=0, atol=1e-4)
        torch.testing.assert_close(msk, aux["masks_queries_logits"], rtol=0, atol=1e-4)
    assert got[-1][1].shape == (2, 7, 24, 32) and got[-1][0].shape == (2, 7, 6)
    assert 0 < blocked.float().mean() < 1  # masked attention blocks some pixels, not all


def test_the_training_loss_equals_hugging_face(pair):
    ref, ours = pair
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 64, 96, generator=g)
    targets = [{"labels": torch.tensor([1, 4, 0]), "masks": (torch.rand(3, 64, 96, generator=g) > 0.5).float()},
               {"labels": torch.tensor([2]), "masks": (torch.rand(1, 64, 96, generator=g) > 0.3).float()}]
    torch.manual_seed(7)
    expected = ref(ours.normalize(x), mask_labels=[t["masks"] for t in targets],
                   class_labels=[t["labels"] for t in targets])
    torch.manual_seed(7)
    got = ours(x, targets)
    torch.testing.assert_close(got["loss"], expected.loss, rtol=1e-5, atol=1e-4)
    assert len(got) == 1 + 3 * 4  # deep supervision over the 4 predictions


@pytest.mark.parametrize("size", [(64, 64), (70, 90)])
def test_one_forward_gives_semantic_instance_and_panoptic(size):
    torch.manual_seed(0)
    m = Mask2Former(num_classes=4, num_stuff=2, backbone="resnet18", dim=64, mask_dim=64, heads=4,
                    encoder_layers=1, encoder_ffn=64, decoder_layers=3, decoder_ffn=64, num_queries=6,
                    score_thresh=0.2, overlap_thresh=0.5).eval()
    h, w = size
    with torch.no_grad():
        out = m(torch.rand(2, 3, h, w))
    assert len(out) == 2
    for r in out:
        assert r["sem_seg"].shape == (4, h, w)
        k = len(r["labels"])
        assert r["masks"].shape == (k, h, w) and r["boxes"].shape == (k, 4) and r["scores"].shape == (k,)
        assert bool((r["labels"] < 2).all())  # instances are things only when there is stuff
        assert r["segments"].shape == (h, w) and r["segments"].dtype == torch.int32
        assert {int(i) for i in torch.unique(r["segments"])} - {0} <= {s["id"] for s in r["segments_info"]}


def test_images_of_different_sizes_and_backward():
    torch.manual_seed(0)
    m = Mask2Former(num_classes=3, backbone="resnet18", dim=32, mask_dim=32, heads=2, encoder_layers=1,
                    encoder_ffn=32, decoder_layers=2, decoder_ffn=32, num_queries=4, num_points=64)
    check_mixed_sizes_and_backward(m)


def test_deformable_attention_samples_where_its_offsets_point():
    """One head, one level, one point, no learned offset: the output is the value at the reference."""
    attn = MSDeformAttn(dim=4, heads=1, levels=1, points=1)
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    for lin in (attn.value_proj, attn.output_proj):
        torch.nn.init.eye_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    value = torch.randn(1, 4, 5, 6)  # (B, C, h, w)
    ref = torch.tensor([[[[(2 + 0.5) / 6, (3 + 0.5) / 5]]]])  # the centre of pixel (y=3, x=2)
    out = attn(torch.randn(1, 1, 4), ref, value.flatten(2).transpose(1, 2), [(5, 6)])
    torch.testing.assert_close(out[0, 0], value[0, :, 3, 2])


def test_bf16_autocast_training_step_gives_finite_float32_losses():
    from segzoo.models.mask2former import mask2former_resnet18_small

    torch.manual_seed(0)
    m = mask2former_resnet18_small(num_classes=3, num_queries=5, num_points=128)
    targets = [{"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 64, 64) > 0.5}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = m(torch.rand(1, 3, 64, 64), targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_swin_tiny_body_runs_at_any_size():
    from segzoo.models.mask2former import mask2former_swin_tiny

    torch.manual_seed(0)
    m = mask2former_swin_tiny(num_classes=3, dim=32, mask_dim=32, heads=2, encoder_layers=1, encoder_ffn=32,
                              decoder_layers=1, decoder_ffn=32, num_queries=4).eval()
    last = m.backbone.body.layers_3.blocks[1]
    assert last.shift_size == (3, 3)  # shifted windows in the last stage, as the paper's Swin
    with torch.no_grad():
        for h, w in ((64, 64), (70, 100)):
            out = m(torch.rand(1, 3, h, w))[0]
            assert out["sem_seg"].shape == (3, h, w) and torch.isfinite(out["sem_seg"]).all()


@pytest.mark.slow
def test_overfits_one_panoptic_image_end_to_end():
    """Training, the panoptic merge and PQ together: one image, two things on one stuff segment."""
    from segzoo.metrics.panoptic import PanopticQuality
    from segzoo.models.mask2former import mask2former_resnet18_small

    torch.manual_seed(0)
    m = mask2former_resnet18_small(num_classes=3, num_stuff=1, num_queries=8, num_points=256, score_thresh=0.5,
                                   overlap_thresh=0.5)
    img = torch.full((1, 3, 64, 64), 0.2)
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 8:30, 6:28] = True
    masks[1, 36:60, 30:58] = True
    masks[2] = ~(masks[0] | masks[1])
    img[0, 0][masks[0]] = 0.9
    img[0, 1][masks[1]] = 0.9
    targets = [{"labels": torch.tensor([0, 1, 2]), "masks": masks}]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # about 15 s on one free core; two threads on a busy machine are far slower
    try:
        for _ in range(40):
            loss = m(img, targets)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    m.eval()
    with torch.no_grad():
        out = m(img)[0]
    pq = PanopticQuality(num_classes=3, num_stuff=1)
    pq.update([out], targets)
    assert pq.compute()["pq"] > 0.9
    assert (out["sem_seg"].argmax(0) == masks.float().argmax(0)).float().mean() > 0.95


def test_crowd_segments_do_not_count_in_the_loss():
    from segzoo.models.mask2former import mask2former_resnet18_small

    torch.manual_seed(0)
    m = mask2former_resnet18_small(num_classes=3, num_queries=5, num_points=64)
    x = torch.rand(1, 3, 64, 64)
    masks = torch.rand(2, 64, 64) > 0.5
    with_crowd = {"labels": torch.tensor([0, 1]), "masks": masks, "iscrowd": torch.tensor([0, 1])}
    without = {"labels": torch.tensor([0]), "masks": masks[:1]}
    torch.manual_seed(1)
    a = m(x, [with_crowd])
    torch.manual_seed(1)
    b = m(x, [without])
    assert all(torch.equal(a[k], b[k]) for k in a)
