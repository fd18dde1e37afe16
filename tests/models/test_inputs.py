"""Bad and unusual images, for every registered model: a clear error or correct behaviour."""

import functools
import warnings

import pytest
import torch

import segzoo
from segzoo.models import base
from segzoo.registry import get_entry

ALL = segzoo.list_models()


@pytest.fixture(scope="module")
def model_cache():
    from tests.conftest import build_small

    cache = functools.lru_cache(maxsize=None)(build_small)
    yield cache
    cache.cache_clear()


@pytest.fixture
def small_model(model_cache):  # eval-mode models, built once per module (the tests only run inference)
    return model_cache


def is_semantic(name):
    return get_entry(name).task == "semantic"


@pytest.mark.parametrize("name", ALL)
def test_wrong_rank_channels_and_dtype(name, small_model):
    model = small_model(name)
    with pytest.raises(ValueError, match="N x 3 x H x W|3 x H x W"):
        model(torch.rand(1, 1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"3 \(RGB\) channels"):
        model(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="float images in \\[0, 1\\]"):
        model(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8))


@pytest.mark.parametrize("name", ALL)
def test_nan_or_inf_image(name, small_model):
    model = small_model(name)
    for bad in (float("nan"), float("inf")):
        x = torch.rand(1, 3, 32, 32)
        x[0, 1, 3, 4] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            model(x)


@pytest.mark.parametrize("name", ALL)
def test_out_of_range_values_warn_once(name, small_model, monkeypatch):
    monkeypatch.setattr(base, "_RANGE_WARNED", [False])
    model = small_model(name)
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad(), pytest.warns(UserWarning, match=r"expect \[0, 1\]"):
        model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(x)  # second time: silent


@pytest.mark.parametrize("name", ALL)
def test_zero_size_image(name, small_model):
    model = small_model(name)
    with pytest.raises(ValueError, match="empty spatial size"):
        model(torch.rand(1, 3, 0, 32))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("size", [(1, 1), (17, 300)])
def test_tiny_and_elongated_images(name, size, small_model):
    model = small_model(name)
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size))
    if is_semantic(name):
        assert out.shape == (1, model.num_classes, *size)
        assert torch.isfinite(out).all()
    else:
        assert len(out) == 1
        boxes = out[0]["boxes"]
        assert boxes.shape[-1] == 4 and torch.isfinite(boxes).all()
        if len(boxes):
            assert (boxes[:, 2] <= size[1] + 1e-3).all() and (boxes[:, 3] <= size[0] + 1e-3).all()


@pytest.mark.parametrize("name", ALL)
def test_mixed_size_batch(name, small_model):
    model = small_model(name)
    images = [torch.rand(3, 40, 56), torch.rand(3, 64, 48)]
    if is_semantic(name):
        with pytest.raises(ValueError, match="same-size images"):
            model(images)
        return
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, im in zip(out, images):
        if "masks" in o:
            assert o["masks"].shape[-2:] == im.shape[-2:]
        if len(o["boxes"]):
            assert (o["boxes"][:, 2] <= im.shape[-1] + 1e-3).all()
            assert (o["boxes"][:, 3] <= im.shape[-2] + 1e-3).all()


@pytest.mark.parametrize("name", ["fcn_resnet50", "maskrcnn_resnet50_fpn"])
def test_check_inputs_off_skips_the_value_check(name, small_model, monkeypatch):
    model = small_model(name).eval()
    model.check_inputs = False

    def no_sync(*args, **kwargs):
        raise AssertionError("aminmax ran although check_inputs is False")

    monkeypatch.setattr(torch, "aminmax", no_sync)
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    model.check_inputs = True
    with pytest.raises(AssertionError, match="check_inputs"):
        model(torch.rand(1, 3, 32, 32))


def test_list_of_images_is_value_checked_with_one_sync(small_model, monkeypatch):
    model = small_model("maskrcnn_resnet50_fpn").eval()
    images = [torch.rand(3, 32, 40), torch.rand(3, 40, 32), torch.rand(3, 24, 24)]
    images[2][0, 1, 1] = float("nan")
    calls = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: calls.append(t.shape) or real(t))
    with pytest.raises(ValueError, match=r"images\[2\] contain NaN"):
        model(images)
    assert calls == [torch.Size([3, 2])]  # min and max of the 3 images in one transfer
