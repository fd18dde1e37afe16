"""CenterNet's fast inference paths equal the plain ones: fused head, separable peak test, optimized model."""

import pytest
import torch
import torch.nn.functional as F

import segzoo
from segzoo.detection import centernet as ct
from segzoo.layers.conv import OneDNNPointwiseConv2d
from segzoo.models.centernet_head import HEADS, CenterNetHead


def _separate(head: CenterNetHead, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference: each head's own Sequential, one after the other."""
    return {k: getattr(head, k)(x) for k in HEADS}


def _randomized_head(cin: int, hc: int, seed: int = 0) -> CenterNetHead:
    torch.manual_seed(seed)
    head = CenterNetHead(cin, 5, hc)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.2)
    return head


@pytest.mark.parametrize("cin,hc", [(24, 8), (8, 16)])  # wide input (fused) and narrow input (kept apart)
@pytest.mark.parametrize("shape", [(1, 13, 9), (2, 8, 11)])
def test_head_inference_paths_equal_the_three_heads(cin, hc, shape):
    head = _randomized_head(cin, hc).eval()
    assert head.concat == (cin > hc)
    x = torch.randn(shape[0], cin, *shape[1:])
    with torch.no_grad():
        ref = _separate(head, x)
    with torch.no_grad():
        eager = head(x)
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.no_grad():
            got = head(x.contiguous(memory_format=layout))
        for k in HEADS:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5)
    for k in HEADS:
        torch.testing.assert_close(eager[k], ref[k], rtol=1e-5, atol=1e-5)
        assert eager[k].shape == ref[k].shape


@pytest.mark.parametrize("train", [False, True])
def test_fused_head_path_runs_one_convolution(monkeypatch, train):
    # the tests around must fail if the concatenated path were skipped or wrong: count the 3x3 convolutions
    head = _randomized_head(24, 8).train(train)
    calls = []
    real = F.conv2d

    def counting(x, w, *a, **k):
        calls.append(tuple(w.shape))
        return real(x, w, *a, **k)

    monkeypatch.setattr(F, "conv2d", counting)
    with torch.set_grad_enabled(train):
        head(torch.randn(1, 24, 7, 7))
    assert calls[0] == (24, 24, 3, 3) and sum(s[-1] == 3 for s in calls) == 1


def test_traced_head_keeps_three_convolutions():
    # exported graphs (ONNX, int8 by PT2E) see the heads' own weights, which quantizers and exporters recognise
    head = _randomized_head(24, 8).eval()
    x = torch.randn(1, 24, 7, 7)
    program = torch.export.export(head, (x,))
    convs = [n for n in program.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    assert len(convs) == 6 and not any("cat" in str(n.target) for n in program.graph.nodes)
    got = program.module()(x)
    with torch.no_grad():
        ref = _separate(head, x)
    for k in HEADS:
        torch.testing.assert_close(got[k], ref[k])


@pytest.mark.parametrize("batch", [1, 2])
def test_head_training_gradients_equal_the_three_heads(batch):
    head = _randomized_head(24, 8)
    twin = _randomized_head(24, 8)
    head.train()
    twin.train()
    x = torch.randn(batch, 24, 9, 7)
    out, ref = head(x), _separate(twin, x)
    weights = {k: torch.randn_like(v) for k, v in ref.items()}
    sum((out[k] * weights[k]).sum() for k in HEADS).backward()
    sum((ref[k] * weights[k]).sum() for k in HEADS).backward()
    for (name, p), q in zip(head.named_parameters(), twin.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
    assert head.concat  # the gradients above came back through the concatenated weights


@pytest.mark.parametrize("cin,hc", [(24, 8), (8, 16)])
def test_head_fold_for_inference_is_exact_and_keeps_the_state_dict(cin, hc):
    head = _randomized_head(cin, hc).eval()
    keys = list(head.state_dict())
    x = torch.randn(2, cin, 11, 6)
    with torch.no_grad():
        ref = _separate(head, x)
        assert head.fold_for_inference()
        assert (head.folded is not None) == (cin > hc)
        assert all(type(getattr(head, k)[2]) is OneDNNPointwiseConv2d for k in HEADS)
        for layout in (torch.contiguous_format, torch.channels_last):
            head.to(memory_format=layout)
            got = head(x.contiguous(memory_format=layout))
            for k in HEADS:
                torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5)
    assert [k for k in head.state_dict() if not k.startswith("folded.")] == keys


def _reference_decode(heatmap, size, offset, stride, k=100, kernel=3):
    """The decoding before the separable peak test: a max-pool keeps the peaks, and a stable sort
    of every score ranks them (``decode`` promises equal scores in index order)."""
    n, c, h, w = heatmap.shape
    peak = F.max_pool2d(heatmap, kernel, stride=1, padding=(kernel - 1) // 2)
    heat = heatmap * (peak == heatmap)
    k = min(k, c * h * w)
    scores, idx = heat.flatten(1).sort(dim=1, descending=True, stable=True)  # equal scores in index order
    scores, idx = scores[:, :k], idx[:, :k]
    labels, cell = idx // (h * w), idx % (h * w)
    ys, xs = (cell // w).to(heatmap.dtype), (cell % w).to(heatmap.dtype)
    flat = (cell + torch.arange(n).view(n, 1) * (h * w)).flatten()
    reg = ct.gather_at(offset, flat).view(n, k, 2)
    wh = ct.gather_at(size, flat).view(n, k, 2)
    cx, cy = xs + reg[..., 0], ys + reg[..., 1]
    boxes = torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1)
    return boxes * stride, scores, labels


def _heatmaps():
    g = torch.Generator().manual_seed(0)
    yield torch.rand(2, 3, 9, 13, generator=g)  # distinct values
    yield torch.rand(2, 3, 9, 13, generator=g).round(decimals=1)  # many ties and plateaus
    h = torch.full((1, 2, 6, 7), 0.5)  # one flat plateau: every cell a peak
    h[0, 1, :, -1] = 0.9  # a column of peaks on the right border
    h[0, 1, 0, 0] = 0.95  # a corner peak
    yield h
    h = torch.rand(1, 4, 1, 5, generator=g)  # a one-row map: the padding is on every side of it
    yield h
    h = torch.rand(1, 80, 32, 32, generator=g)
    yield h.contiguous(memory_format=torch.channels_last)  # the optimized model's layout


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_decode_equals_the_max_pool_decoding(kernel):
    for heat in _heatmaps():
        n, _, h, w = heat.shape
        size = torch.rand(n, 2, h, w) * 5
        offset = torch.rand(n, 2, h, w)
        for k in (3, 100):
            got = ct.decode(heat, size, offset, 4, k=k, kernel=kernel)
            ref = _reference_decode(heat, size, offset, 4, k=k, kernel=kernel)
            for a, b in zip(got, ref):
                assert torch.equal(a, b)


def test_local_max_equals_max_pool_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 10, generator=g).round()
    x[0, 0, 3, 4] = float("nan")
    x[1, 2, 0, :] = float("-inf")
    for kernel in (1, 3, 5, 9):
        ref = F.max_pool2d(x, kernel, stride=1, padding=kernel // 2)
        got = ct.local_max(x, kernel)
        assert torch.equal(got.isnan(), ref.isnan())
        assert torch.equal(got.nan_to_num(), ref.nan_to_num())
    with pytest.raises(ValueError, match="odd positive int"):
        ct.local_max(x, 2)


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["centernet_resnet18", "centernet_resdcn18", "centernet_dla34"])
def test_optimized_centernet_equals_eager(name):
    torch.manual_seed(0)
    model = segzoo.build(name, num_classes=3).eval()
    _randomize_bn(model, 1)
    opt = segzoo.optimize(model)
    assert opt.choices.rewritten >= 1  # the head's fold applied
    head = opt.model.head
    assert (head.folded is not None) == model.head.concat
    for size in ((64, 96), (96, 64)):
        x = torch.rand(2, 3, *size)
        with torch.no_grad():
            padded, _ = model.preprocess(x)
            ref = model.forward_maps(padded)
            dets_ref = model(x)
        with torch.inference_mode():
            got = opt.model.forward_maps(padded.contiguous(memory_format=torch.channels_last))
        for k in HEADS:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4)
        dets = opt(x)
        for a, b in zip(dets, dets_ref):
            # the 20 best detections (further down, near-equal scores may swap by float rounding)
            torch.testing.assert_close(a["scores"][:20], b["scores"][:20], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a["boxes"][:20], b["boxes"][:20], rtol=1e-4, atol=1e-3)


def test_deconv_neck_runs_channels_last_at_inference_with_the_same_maps():
    from segzoo.models.centernet import CHANNELS_LAST_NECKS

    torch.manual_seed(0)
    model = segzoo.build("centernet_resnet18", num_classes=3, neck_channels=(32, 32, 32), head_conv=8).eval()
    _randomize_bn(model, 2)
    assert model.neck_name in CHANNELS_LAST_NECKS
    x = torch.rand(2, 3, 96, 64)
    with torch.enable_grad():  # gradients on: the plain contiguous path
        ref = {k: v.detach() for k, v in model.forward_maps(x).items()}
    with torch.no_grad():
        got = model.forward_maps(x)
    for k in HEADS:
        assert ref[k].is_contiguous() and got[k].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5)
    assert "deconv_dcn" not in CHANNELS_LAST_NECKS and "dla_up" not in CHANNELS_LAST_NECKS  # not measured faster
