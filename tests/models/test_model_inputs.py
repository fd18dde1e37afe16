"""Unusual inputs to every registered model: empty batches, other float dtypes, numpy arrays,
odd ``num_classes`` values and misspelt backbones get an answer, never a crash far away."""

import functools

import numpy as np
import pytest
import torch

import segzoo
from tests.conftest import build_small

ALL = segzoo.list_models()


@pytest.fixture(scope="module")
def small_model():
    cache = functools.lru_cache(maxsize=None)(build_small)
    yield cache
    cache.cache_clear()


def _is_semantic(model) -> bool:
    return model.task == "semantic"


@pytest.mark.parametrize("name", ALL)
def test_empty_batch_gives_empty_predictions(name, small_model):
    model = small_model(name)
    with torch.no_grad():
        out = model(torch.rand(0, 3, 48, 64))
        out_list = model([])
    if _is_semantic(model):
        assert out.shape == (0, model.num_classes, 48, 64)
        assert out_list.shape[:2] == (0, model.num_classes)
    else:
        assert out == [] and out_list == []
    with pytest.raises(ValueError, match="empty batch"):
        model(torch.rand(0, 3, 48, 64), [] if not _is_semantic(model) else torch.zeros(0, 48, 64).long())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_run_in_the_model_dtype(name, dtype, small_model):
    model = small_model(name)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(dtype))
    if _is_semantic(model):
        assert out.dtype == torch.float32 and out.shape == ref.shape
        if dtype == torch.float64:
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    else:
        assert out[0]["boxes"].dtype == torch.float32
        if dtype == torch.float64:
            torch.testing.assert_close(out[0]["scores"], ref[0]["scores"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["fcn_resnet50", "maskrcnn_resnet50_fpn", "centernet_resnet18"])
def test_numpy_images_are_refused_with_the_way_to_convert(name, small_model):
    model = small_model(name)
    array = np.random.rand(32, 32, 3).astype(np.float32)
    for images in (array, array.transpose(2, 0, 1)[None], [array.transpose(2, 0, 1)]):
        with pytest.raises(TypeError, match=r"numpy array.*torch.from_numpy"):
            model(images)


@pytest.mark.parametrize("name", ["fcn_resnet50", "maskrcnn_resnet50_fpn", "centernet_resnet18", "hrnet_w18_small"])
def test_num_classes_bool_refused_numpy_int_accepted(name):
    kwargs = {"backbone": "resnet18"} if name in ("fcn_resnet50", "maskrcnn_resnet50_fpn") else {}
    for bad in (True, False, 2.0, "3", np.float32(3)):
        with pytest.raises(ValueError, match="num_classes must be a positive int"):
            segzoo.build(name, num_classes=bad, **kwargs)
    model = segzoo.build(name, num_classes=np.int64(3), **kwargs)
    assert model.num_classes == 3 and type(model.num_classes) is int and model.spec.num_classes == 3
    assert model.spec.to_json()  # JSON-serialisable: a numpy int would not be


@pytest.mark.parametrize("name", ["fcn_resnet50", "maskrcnn_resnet50_fpn", "centernet_resnet18", "unet_resnet18"])
def test_unknown_backbone_suggests_the_closest_names(name):
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet19'; did you mean .*resnet18"):
        segzoo.build(name, backbone="resnet19")
    with pytest.raises(ValueError, match=r"did you mean .*convnext_tiny"):
        segzoo.build(name, backbone="convnext_tinny")
    with pytest.raises(ValueError, match=r"did you mean .*hrnet_w18"):
        segzoo.build(name, backbone="hrnet_w17")
