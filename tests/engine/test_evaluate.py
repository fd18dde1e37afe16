"""The one evaluate: batched, tiled and augmented paths agree with predict image by image."""

import pytest
import torch
from torch import nn

import segzoo
from segzoo.engine import evaluate
from segzoo.metrics import SegmentationMetric
from segzoo.models.base import SegmentationModel


class LocalFCN(SegmentationModel):
    def __init__(self, num_classes=3):
        super().__init__(num_classes)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1))

    def forward_logits(self, x, with_aux=False):
        return self.body(x), None


def _data():
    g = torch.Generator().manual_seed(0)
    sizes = [(40, 48), (40, 48), (40, 48), (36, 52), (40, 48)]  # a run of 3, then sizes change
    return [(torch.rand(3, h, w, generator=g), torch.randint(0, 3, (h, w), generator=g)) for h, w in sizes]


@pytest.mark.parametrize("kwargs", [{}, {"tile": 24, "overlap": 0.25}, {"tta": "flip"}], ids=["plain", "tile", "tta"])
def test_evaluate_equals_predict_image_by_image(kwargs):
    model = LocalFCN().eval()
    data = _data()
    ref = SegmentationMetric(3)
    for image, mask in data:
        ref.update(segzoo.predict(model, image, **kwargs)["mask"][None], mask[None])
    got = evaluate(model, data, batch_size=2, curves=True, num_pictures=2, **kwargs)
    assert torch.equal(got["confusion"], ref.confusion)
    assert got["metrics"]["miou"] == ref.compute()["miou"] and 0 <= got["metrics"]["pr_map"] <= 1
    assert got["num_images"] == 5 and len(got["pictures"]) == 2 and got["class_names"] == ["0", "1", "2"]


def test_evaluate_limits_and_refusals():
    model = LocalFCN().eval()
    data = _data()
    got = evaluate(model, data, max_images=2)
    assert got["num_images"] == 2 and int(got["confusion"].sum()) == 2 * 40 * 48
    with pytest.raises(ValueError, match="semantic models only"):
        evaluate(segzoo.build("centernet_resnet18", num_classes=2), [], tta="flip")
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, [])
    with pytest.raises(ValueError, match="box/instance targets but .* is a semantic model"):
        evaluate(model, [(torch.rand(3, 8, 8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)})])
    assert model.training is False
