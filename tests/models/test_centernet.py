"""CenterNet: parameter count, every variant trains and decodes, targets, losses, decoding."""

import math

import pytest
import torch
from torch import nn

import segzoo
from segzoo.detection import centernet as ct
from segzoo.models.centernet_necks import bilinear_upsampling_

NAMES = segzoo.list_models("centernet_*")


def test_registered_variants():
    assert NAMES == ["centernet_dla34", "centernet_dla34_nodcn", "centernet_mobilenetv2", "centernet_resdcn101",
                     "centernet_resdcn18", "centernet_resnet101", "centernet_resnet18", "centernet_resnet50"]
    assert set(NAMES) <= set(segzoo.list_models(task="detection"))


def test_resnet18_parameter_count_matches_official_res_18():
    model = segzoo.build("centernet_resnet18", num_classes=80)
    assert sum(p.numel() for p in model.parameters()) == 15_820_372


def _targets():
    return [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 8.0, 60.0, 30.0]]),
             "labels": torch.tensor([1, 2])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_trains_and_decodes(name):
    model = segzoo.build(name, num_classes=3)
    x = torch.rand(2, 3, 64, 64)
    losses = model(x, _targets())
    assert set(losses) == {"loss_heatmap", "loss_size", "loss_offset", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    grads = [p.grad for p in model.head.heatmap.parameters()] + [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in grads)
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80), torch.rand(3, 50, 64)])  # a list of sizes
    assert len(out) == 2
    for o, (h, w) in zip(out, [(64, 80), (50, 64)]):
        assert o["boxes"].shape == (100, 4) and o["scores"].shape == (100,)
        assert o["labels"].dtype == torch.int64 and int(o["labels"].max()) < 3
        assert bool((o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all())
        assert bool((o["scores"][:-1] >= o["scores"][1:]).all())


def test_heads_layout_and_init():
    model = segzoo.build("centernet_dla34_nodcn", num_classes=5)
    assert model.class_layers == ("head.heatmap.2",)
    assert torch.all(model.head.heatmap[2].bias == -2.19)
    assert model.head.heatmap[0].out_channels == 256 and model.neck.out_channels == 64
    with torch.no_grad():
        maps = model.forward_maps(torch.zeros(1, 3, 96, 64))
    assert maps["heatmap"].shape == (1, 5, 24, 16) and maps["size"].shape == maps["offset"].shape == (1, 2, 24, 16)


def test_bilinear_deconv_init_upsamples():
    up = bilinear_upsampling_(torch.nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1, bias=False))
    x = torch.ones(1, 3, 5, 5)
    y = up(x)  # a constant map stays constant away from the border
    assert y.shape == (1, 3, 10, 10) and torch.allclose(y[..., 1:-1, 1:-1], torch.ones(1, 3, 8, 8))
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 3, 5, 5)
    row = up(ramp)[0, 0, 3, 1:-1]
    assert torch.allclose(row.diff(), torch.full((7,), 0.5))  # linear stays linear


def test_gaussian_radius_known_values():
    # worked by hand from CornerNet's three cases (official form): 10 x 10 gives r3 = 2.733
    r = ct.gaussian_radius(torch.tensor([10.0, 3.0]), torch.tensor([10.0, 40.0]))
    b3, c3 = -2 * 0.7 * 20, (0.7 - 1) * 100
    assert r[0].item() == pytest.approx((b3 + math.sqrt(b3 ** 2 - 4 * 2.8 * c3)) / 2)
    assert int(r[0]) == 2 and int(r[1]) == 1


def test_heatmap_targets_follow_the_official_rules():
    boxes = torch.tensor([[8.0, 8.0, 48.0, 48.0], [10.0, 10.0, 46.0, 46.0], [60.0, 4.0, 64.0, 12.0]])
    enc = ct.encode_targets(boxes, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]),
                            torch.tensor([[64, 64]]), num_classes=2, out_size=(16, 16), stride=4)
    hm = enc["heatmap"][0]
    # box 1: 10 x 10 cells, centre (7, 7) exactly, radius 2, sigma 5/6
    assert hm[0, 7, 7] == 1 and hm[0, 7, 9] == pytest.approx(math.exp(-4 / (2 * (5 / 6) ** 2)), rel=1e-5)
    assert hm[0, 7, 10] == 0 and hm[0, 10, 7] == 0  # cut at the radius
    assert enc["size"][0].tolist() == [10.0, 10.0] and enc["offset"][0].tolist() == [0.0, 0.0]
    # box 3 touches the right border: 1 x 2 cells, centre (15.5, 2) -> cell (15, 2), offset 0.5
    assert hm[1, 2, 15] == 1 and enc["offset"][2].tolist() == [0.5, 0.0]
    assert enc["index"].tolist() == [7 * 16 + 7, 7 * 16 + 7, 2 * 16 + 15]
    assert int((hm == 1).sum()) == 2  # the two same-class peaks at one cell merge by max


def test_focal_loss_matches_formula():
    target = torch.tensor([[[[1.0, 0.5], [0.0, 0.9]]]])
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 0.0]]]])
    p = torch.sigmoid(logits)
    pos = -(torch.log(p[0, 0, 0, 0]) * (1 - p[0, 0, 0, 0]) ** 2)
    neg = -sum(torch.log(1 - p[0, 0, i, j]) * p[0, 0, i, j] ** 2 * (1 - target[0, 0, i, j]) ** 4
               for i, j in ((0, 1), (1, 0), (1, 1)))
    assert ct.focal_loss(logits, target).item() == pytest.approx((pos + neg).item(), rel=1e-5)
    good = ct.focal_loss(torch.where(target == 1, 20.0, -20.0), (target == 1).float())
    assert good < 1e-3


def test_encode_then_decode_is_identity():
    torch.manual_seed(3)
    n, stride, out = 3, 4, (24, 32)
    sizes = torch.tensor([[96, 128], [90, 120], [96, 100]])
    boxes, labels, idx = [], [], []
    for i in range(n):  # boxes with distinct centre cells
        cells = torch.randperm(out[0] * out[1])[:5]
        cy, cx = (cells // out[1]).float() * stride + 2.5, (cells % out[1]).float() * stride + 1.25
        w, h = torch.rand(5) * 30 + 4, torch.rand(5) * 30 + 4
        b = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        b = segzoo.detection.boxes.clip_boxes(b, sizes[i])
        keep = (b[:, 2] - b[:, 0] > 1) & (b[:, 3] - b[:, 1] > 1)
        boxes.append(b[keep])
        labels.append(torch.randint(0, 4, (int(keep.sum()),)))
        idx.append(torch.full((int(keep.sum()),), i))
    boxes, labels, idx = torch.cat(boxes), torch.cat(labels), torch.cat(idx)
    enc = ct.encode_targets(boxes, labels, idx, sizes, num_classes=4, out_size=out, stride=stride)
    size_map, off_map = torch.zeros(n, 2, *out), torch.zeros(n, 2, *out)
    img, cell = enc["index"] // (out[0] * out[1]), enc["index"] % (out[0] * out[1])
    size_map[img, :, cell // out[1], cell % out[1]] = enc["size"]  # ground-truth maps
    off_map[img, :, cell // out[1], cell % out[1]] = enc["offset"]
    k = int(torch.bincount(idx).max())
    dec_boxes, scores, dec_labels = ct.decode(enc["heatmap"], size_map, off_map, stride, k=k)
    for i in range(n):
        mine = idx == i
        found = scores[i] == 1
        assert int(found.sum()) == int(mine.sum())
        got = dec_boxes[i][found]
        order_a = torch.argsort(boxes[mine][:, 0] * 1e4 + boxes[mine][:, 1])
        order_b = torch.argsort(got[:, 0] * 1e4 + got[:, 1])
        torch.testing.assert_close(got[order_b], boxes[mine][order_a], atol=1e-4, rtol=0)
        assert torch.equal(dec_labels[i][found][order_b], labels[mine][order_a])


def test_decode_keeps_only_local_peaks():
    heat = torch.zeros(2, 2, 8, 8)
    heat[0, 1, 3, 3], heat[0, 1, 3, 4] = 0.9, 0.8  # the 0.8 next to a 0.9 is suppressed
    heat[1, 0, 6, 1] = 0.7
    size = torch.ones(2, 2, 8, 8) * 2
    boxes, scores, labels = ct.decode(heat, size, torch.zeros(2, 2, 8, 8), 4, k=3)
    assert scores[0].tolist() == pytest.approx([0.9, 0.0, 0.0]) and labels[0, 0] == 1
    assert boxes[0, 0].tolist() == [8.0, 8.0, 16.0, 16.0]
    assert scores[1, 0].item() == pytest.approx(0.7) and boxes[1, 0].tolist() == [0.0, 20.0, 8.0, 28.0]


def test_images_without_objects():
    model = segzoo.build("centernet_resnet18", num_classes=2, neck_channels=(32, 32, 32))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(torch.rand(2, 3, 64, 64), [empty, empty])
    assert losses["loss_size"] == 0 and losses["loss_offset"] == 0 and losses["loss_heatmap"] > 0
    losses["loss"].backward()
    assert model.head.heatmap[2].bias.grad.abs().sum() > 0  # negatives still train the heatmap


def test_score_thresh_and_max_detections():
    model = segzoo.build("centernet_resnet18", num_classes=2, max_detections=7, score_thresh=0.1).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert all(len(o["boxes"]) <= 7 and bool((o["scores"] >= 0.1).all()) for o in out)


def test_training_on_synthetic_boxes_lowers_the_loss():
    torch.manual_seed(0)
    images = torch.full((2, 3, 64, 64), 0.1)
    targets = []
    for i, boxes in enumerate(([[8, 8, 28, 30], [36, 20, 60, 52]], [[12, 30, 44, 60]])):
        b = torch.tensor(boxes, dtype=torch.float32)
        labels = torch.tensor([j % 2 for j in range(len(boxes))])
        for (x1, y1, x2, y2), lab in zip(b.long().tolist(), labels.tolist()):
            images[i, lab, y1:y2, x1:x2] = 0.9  # red or green rectangles
        targets.append({"boxes": b, "labels": labels})
    model = segzoo.build("centernet_resnet18", num_classes=2, neck_channels=(64, 64, 64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(12):
        losses = model(images, targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]
    assert history[-1]["loss_heatmap"] < 0.1 * history[0]["loss_heatmap"]
    assert history[-1]["loss_size"] < history[0]["loss_size"]


@pytest.mark.parametrize("neck,backbone", [("deconv", "mobilenetv3_small_100"), ("dla_up_conv", "resnet18"),
                                           ("deconv_conv", "resnet18")])
def test_other_backbones_and_necks(neck, backbone):
    kw = {"neck_channels": (64, 64, 64)} if neck.startswith("deconv") else {}
    model = segzoo.build("centernet_resnet18", num_classes=2, backbone=backbone, neck=neck, **kw)
    x = torch.rand(1, 3, 64, 64)
    model(x, [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])}])["loss"].backward()
    assert model.spec.kwargs["backbone"] == backbone
    assert model.eval()(x)[0]["boxes"].shape == (100, 4)


def test_user_errors():
    with pytest.raises(ValueError, match="neck_channels"):
        segzoo.build("centernet_resnet18", neck_channels=(256, 256))
    with pytest.raises(ValueError, match="neck must be one of"):
        segzoo.build("centernet_resnet18", neck="fpn")
    with pytest.raises(TypeError, match="head_conv"):
        segzoo.build("centernet_resnet18", head_cnv=3)
    model = segzoo.build("centernet_resnet18", num_classes=2)
    with pytest.raises(ValueError, match="label 2 but num_classes=2"):
        model(torch.rand(1, 3, 64, 64), [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([2])}])


def test_save_load_round_trip(tmp_path):
    model = segzoo.build("centernet_resdcn18", num_classes=3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2]).eval()
    segzoo.save(model, tmp_path / "m.safetensors", classes=["a", "b", "c"])
    again = segzoo.load(tmp_path / "m.safetensors")
    assert again.spec == model.spec and again.classes == ["a", "b", "c"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0]["boxes"], again(x)[0]["boxes"])


@pytest.mark.parametrize("name", ["centernet_resdcn18"])
def test_export_onnx_matches_eager(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from segzoo import export as ex

    model = segzoo.build(name, num_classes=3, score_thresh=0.3, max_detections=20).eval()
    with torch.no_grad():  # a few confident peaks so that padding is exercised
        model.head.heatmap[2].bias.copy_(torch.tensor([-2.0, 0.0, -1.0]))
    x = torch.rand(2, 3, 64, 96)
    ref = ex.eager_outputs(model, x, max_detections=20)
    eager = model(x)
    for i in range(2):  # the padded outputs hold exactly the eager detections first
        n = int(ref[3][i])
        assert 0 < n <= 20 and torch.equal(ref[0][i, :n], eager[i]["boxes"][:n])
        assert bool((ref[2][i, n:] == -1).all()) and bool((ref[1][i, n:] == 0).all())
    path = ex.export_onnx(model, tmp_path / "m.onnx", x, max_detections=20)  # DCN exports as GridSample
    outs = ex.run_onnx(path, x)
    assert torch.equal(outs[3], ref[3])
    assert (outs[1] - ref[1]).abs().max() < 1e-4

    def rows(o, i):  # equal scores (an untrained heatmap ties its peaks) may come in either order
        r = torch.cat([o[1][i, :, None].round(decimals=3), o[2][i, :, None].float(), o[0][i].round(decimals=1)], 1)
        for col in reversed(range(r.shape[1])):
            r = r[r[:, col].argsort(stable=True)]
        return r

    for i in range(2):
        assert (rows(outs, i) - rows(ref, i)).abs().max() < 0.2


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv2_100"])
def test_deconv_neck_eval_mode_matches_training_after_a_short_run(backbone):
    # BatchNorm's running variance starts at 1: at the official deconv init (normal, std 0.001) the
    # first deconvolution's outputs have a variance near 1e-4, and after the 20 updates of a short
    # fine-tune the eval-mode neck output was ~100x smaller than in training (a flat heatmap in eval)
    torch.manual_seed(0)
    model = segzoo.build("centernet_resnet18", num_classes=1, backbone=backbone, neck_channels=(32, 32, 32))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = [model.backbone(model.normalize(x))[-1]]
        model.neck.train()
        for _ in range(20):
            trained = model.neck(feats)
        model.neck.eval()
        ratio = float(model.neck(feats).std() / trained.std())
    assert 0.5 < ratio < 2.0, ratio


def test_regression_heads_init_as_the_official_msra_resnet():
    # official init_weights: only the output conv of wh/reg (out channels == the head's outputs) is
    # normal(0, 0.001) with bias 0; their 3x3 conv keeps PyTorch's default, like the heatmap head's.
    # With both layers at 0.001 the size head's hidden features were ~50x smaller than the heatmap head's.
    torch.manual_seed(0)
    head = segzoo.build("centernet_resnet18", num_classes=3).head
    default = nn.Conv2d(256, 64, 3, padding=1).weight.std()  # kaiming_uniform(a=sqrt(5)): 1 / sqrt(3 fan_in)
    for h in (head.size, head.offset, head.heatmap):
        assert 0.8 < float(h[0].weight.std() / default) < 1.2
        assert float(h[0].bias.abs().max()) > 0  # default uniform bias, as the official 3x3 convs
    for h in (head.size, head.offset):
        assert 0.0008 < float(h[2].weight.std()) < 0.0012 and bool((h[2].bias == 0).all())
    assert bool((head.heatmap[2].bias == -2.19).all())
    x = torch.randn(2, 256, 8, 8)
    hidden = {k: float(getattr(head, k)[1](getattr(head, k)[0](x)).std()) for k in ("heatmap", "size")}
    assert hidden["size"] > 0.5 * hidden["heatmap"], hidden
