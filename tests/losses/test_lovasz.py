"""Lovasz-softmax and Lovasz hinge against segmentation_models_pytorch's (Berman's code): value and gradient."""

import pytest
import torch

from segzoo.losses import lovasz_hinge, lovasz_softmax

smp_lovasz = pytest.importorskip("segmentation_models_pytorch.losses.lovasz", reason="smp is the reference")


def _batch(seed=0, n=2, c=4, h=6, w=7, ignore=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, c, (n, h, w), generator=g)
    targets[torch.rand(n, h, w, generator=g) < ignore] = 255
    return logits, targets


def _value_and_grad(fn, logits, *args):
    x = logits.clone().float().requires_grad_(True)
    loss = fn(x, *args)
    loss.backward()
    return loss.detach().double(), x.grad.double()


def _close(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_softmax_equals_smp(per_image):
    logits, targets = _batch()
    targets[0, 0, 0] = 3  # class 3 present in both images, class 2 absent from image 1
    targets[1][targets[1] == 2] = 0
    ref = smp_lovasz.LovaszLoss("multiclass", per_image=per_image, ignore_index=255)
    _close(_value_and_grad(lambda x, t: lovasz_softmax(x, t, per_image=per_image), logits, targets),
           _value_and_grad(ref, logits, targets))


def test_lovasz_softmax_class_weights_and_all_classes():
    logits, targets = _batch(seed=1, c=5)
    targets[targets == 4] = 0  # class 4 absent
    probs = logits.float().softmax(1)
    per_class = torch.stack([smp_lovasz._lovasz_softmax(probs, targets, classes=[c], ignore=255) for c in range(5)])
    w = torch.tensor([0.5, 2.0, 1.0, 3.0, 7.0])
    present = torch.tensor([1.0, 1, 1, 1, 0])
    expected = (per_class * w * present).sum() / (w * present).sum()
    torch.testing.assert_close(lovasz_softmax(logits.float(), targets, weight=w.tolist()), expected)
    # 'all' also counts the absent class (its loss: the sum of its predicted probabilities' errors)
    expected_all = (per_class * w).sum() / w.sum()
    torch.testing.assert_close(lovasz_softmax(logits.float(), targets, weight=w, classes="all"), expected_all)


@pytest.mark.parametrize("per_image", [False, True])
def test_binary_lovasz_hinge_equals_smp(per_image):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 1, 8, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 2, (3, 8, 5), generator=g)
    targets[:, 0, :2] = 255
    ref = smp_lovasz.LovaszLoss("binary", per_image=per_image, ignore_index=255)
    _close(_value_and_grad(lambda x, t: lovasz_hinge(x, t, per_image=per_image), logits, targets),
           _value_and_grad(lambda x, t: ref(x[:, 0], t), logits, targets))


def test_multiclass_lovasz_hinge_is_the_binary_hinge_one_vs_rest():
    logits, targets = _batch(seed=3, c=3)

    def reference(x, t):
        losses = []
        for c in range(x.shape[1]):
            others = torch.cat([x[:, :c], x[:, c + 1:]], 1).amax(1)
            margin = x[:, c] - others  # > 0 where class c wins
            fg = torch.where(t == 255, t, (t == c).long())
            losses.append(smp_lovasz._lovasz_hinge(margin, fg, per_image=False, ignore=255))
        return torch.stack(losses).mean()

    _close(_value_and_grad(lovasz_hinge, logits, targets), _value_and_grad(reference, logits, targets))
    # two classes: class 1's term is the binary hinge on l1 - l0
    two = logits[:, :2]
    t2 = torch.where(targets == 255, targets, targets.clamp(max=1))
    x = two.float()
    binary = smp_lovasz._lovasz_hinge(x[:, 1] - x[:, 0], t2, per_image=False, ignore=255)
    flipped = smp_lovasz._lovasz_hinge(x[:, 0] - x[:, 1], torch.where(t2 == 255, t2, 1 - t2), per_image=False,
                                       ignore=255)
    torch.testing.assert_close(lovasz_hinge(x, t2), (binary + flipped) / 2)


@pytest.mark.parametrize("fn", [lovasz_softmax, lovasz_hinge])
def test_lovasz_ignores_ignored_pixels_and_survives_empty_batches(fn):
    logits, targets = _batch(seed=4)
    changed = logits.clone()
    changed[targets[:, None].expand_as(logits) == 255] = 40.0
    torch.testing.assert_close(fn(changed, targets), fn(logits, targets))
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = fn(x, torch.full((1, 4, 4), 255))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="present' or 'all"):
        fn(logits, targets, classes="some")


def test_lovasz_is_zero_for_perfect_logits():
    targets = torch.randint(0, 3, (2, 6, 6))
    onehot = torch.nn.functional.one_hot(targets, 3).permute(0, 3, 1, 2).float()
    assert float(lovasz_softmax(onehot * 50, targets)) < 1e-6
    assert float(lovasz_hinge(onehot * 50, targets)) == 0.0  # all margins >= 1
    assert float(lovasz_softmax(onehot.roll(1, 1) * 50, targets)) > 0.9
