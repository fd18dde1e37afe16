"""``torch.compile`` of the detection inference paths in one graph (``fullgraph=True``).

The padded ``exportable()`` paths and the list-of-dicts ``model(images)`` both compile
whole. Mask R-CNN's NMS and boolean indexing have data-dependent output sizes, and both
detectors turn counts into Python ints to split their batch into per-image dicts, so
those paths need dynamo's two capture flags (``capture_dynamic_output_shape_ops``,
``capture_scalar_outputs``); without them dynamo breaks the graph at each such op.
"""

import pytest
import torch

from tests.conftest import build_small
from tests.test_export import spread_scores

CAPTURE = {"capture_dynamic_output_shape_ops": True, "capture_scalar_outputs": True}


def _model(name):
    torch.manual_seed(0)
    return spread_scores(build_small(name)).eval()


def _compiled(module):
    torch._dynamo.reset()
    return torch.compile(module, backend="eager", fullgraph=True)


def _assert_same_detections(out, ref):
    assert len(out) == len(ref)
    for a, b in zip(out, ref):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k])


def test_centernet_exportable_compiles_without_flags():
    model = _model("centernet_resnet18")
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ref = model.exportable(20)(x)
        out = _compiled(model.exportable(20))(x)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["centernet_resnet18", "maskrcnn_resnet50_fpn"])
def test_model_forward_compiles_fullgraph(name):
    model = _model(name)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad(), torch._dynamo.config.patch(**CAPTURE):
        ref = model(x)
        out = _compiled(model)(x)
    assert any(len(r["scores"]) for r in ref), "no detections: the split into images is not exercised"
    _assert_same_detections(out, ref)


def test_maskrcnn_exportable_compiles_fullgraph():
    model = _model("maskrcnn_resnet50_fpn")
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad(), torch._dynamo.config.patch(**CAPTURE):
        ref = model.exportable(20)(x)
        out = _compiled(model.exportable(20))(x)
    assert int(ref[-1][0]) > 0
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)

