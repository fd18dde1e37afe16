"""The evaluation protocols of the published recipes (segzoo.inference.semantic_probs, configured by
the ``eval`` section): whole image, mmsegmentation's sliding window (uniform averaging where windows
overlap), fitting to a reference size, multi-scale + flip; each against a hand computation."""

import json
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segzoo
from segzoo.config import ConfigError, EvalConfig, load_config
from segzoo.data import build_dataset
from segzoo.data.targets import CLASS_MAP
from segzoo.engine.evaluator import evaluate
from segzoo.inference import fit_scale, semantic_probs, sliding_window, tile_origins
from segzoo.tasks import get_task
from tests.data_layouts import data_config

ROOT = Path(__file__).resolve().parents[2]


class WindowMean(nn.Module):
    """Logits equal, at every pixel, to the per-channel mean of the input it was given (plus a
    per-class offset): a window's logits are one constant, so blends are easy to compute by hand."""

    task = "semantic"

    def forward(self, x):
        m = x.mean((2, 3), keepdim=True)  # (N, 3, 1, 1)
        logits = torch.cat([m, -m[:, :1]], 1) + torch.tensor([0.0, 0.1, 0.2, 0.3]).view(1, 4, 1, 1)
        return logits.expand(-1, -1, *x.shape[-2:])


def _model(num_classes=3):
    torch.manual_seed(0)
    return segzoo.build("unet", num_classes=num_classes, channels=[8, 16, 32]).eval()


@pytest.mark.parametrize("size,tile,stride", [(1024, 512, 341), (100, 64, 20), (97, 32, 32), (50, 64, 10),
                                              (100, 30, 7)])
def test_slide_windows_are_mmsegmentations(size, tile, stride):
    # mmseg slide_inference: grids = max(size - crop + stride - 1, 0) // stride + 1; y1 = i * stride,
    # y2 = min(y1 + crop, size), y1 = max(y2 - crop, 0)
    grids = max(size - tile + stride - 1, 0) // stride + 1
    expected = [max(min(i * stride + tile, size) - tile, 0) for i in range(grids)]
    assert tile_origins(size, tile, 0.0, stride) == expected


def test_slide_with_a_window_covering_the_image_equals_whole_image():
    model = _model()
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        whole = semantic_probs(model, x)
        for crop in ((40, 56), (64, 64)):
            kw = get_task("semantic").protocol(EvalConfig(mode="slide", crop=crop))
            torch.testing.assert_close(semantic_probs(model, x, **kw), whole, rtol=0, atol=0)  # bit for bit
        x2 = torch.rand(2, 3, 40, 56)  # a batch: windows run image by image, the whole image batched
        torch.testing.assert_close(semantic_probs(model, x2, **kw), semantic_probs(model, x2), rtol=0, atol=1e-6)


def test_slide_averages_overlapping_windows_uniformly():
    model = WindowMean()
    x = torch.rand(1, 3, 10, 13)
    crop, stride = (6, 8), (3, 4)
    got = sliding_window(model, x, crop, stride=stride, blend="mean")
    total = torch.zeros(4, 10, 13)
    count = torch.zeros(1, 10, 13)
    for y in tile_origins(10, 6, 0, 3):
        for x0 in tile_origins(13, 8, 0, 4):
            total[:, y:y + 6, x0:x0 + 8] += model(x[:, :, y:y + 6, x0:x0 + 8])[0]
            count[:, y:y + 6, x0:x0 + 8] += 1
    torch.testing.assert_close(got, total / count)
    # the tent blend weighs the same windows differently
    assert not torch.allclose(sliding_window(model, x, crop, stride=stride, blend="tent"), got)


def test_flip_and_multi_scale_average_softmax_probabilities():
    model = _model()
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        got = semantic_probs(model, x, **get_task("semantic").protocol(EvalConfig(scales=(0.5, 1.0), flip=True)))
        views = []
        for s in (0.5, 1.0):
            xs = x if s == 1.0 else F.interpolate(x, size=(24, 32), mode="bilinear", align_corners=False,
                                                  antialias=True)
            for flip in (False, True):
                lg = model(xs.flip(-1) if flip else xs)
                lg = lg.flip(-1) if flip else lg
                views.append(F.interpolate(lg, size=(48, 64), mode="bilinear", align_corners=False).softmax(1))
        torch.testing.assert_close(got, sum(views) / 4)
        flip_only = semantic_probs(model, x, **get_task("semantic").protocol(EvalConfig(flip=True)))
        torch.testing.assert_close(flip_only, (model(x).softmax(1) + model(x.flip(-1)).flip(-1).softmax(1)) / 2)


def test_resize_fits_the_reference_size_and_maps_back():
    assert fit_scale(1024, 2048, (1024, 2048)) == 1.0               # Cityscapes at (2048, 1024): unchanged
    assert fit_scale(375, 500, (512, 2048)) == pytest.approx(512 / 375)  # VOC at (2048, 512): short side 512
    assert fit_scale(500, 375, (512, 2048)) == pytest.approx(512 / 375)  # either orientation
    model = _model()
    x = torch.rand(1, 3, 30, 40)
    with torch.no_grad():
        got = semantic_probs(model, x, resize=(60, 200))  # x 2: short side 60
        lg = model(F.interpolate(x, size=(60, 80), mode="bilinear", align_corners=False))
        ref = F.interpolate(lg, size=(30, 40), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(got, ref)


def test_protocol_config_errors_and_defaults():
    with pytest.raises(ConfigError, match="eval.crop"):
        get_task("semantic").protocol(EvalConfig(mode="slide"))
    with pytest.raises(ConfigError, match="mode=slide"):
        get_task("semantic").protocol(EvalConfig(crop=(512, 1024)))
    with pytest.raises(ConfigError, match="semantic"):
        get_task("detection").protocol(EvalConfig(flip=True))
    assert get_task("instance").protocol(EvalConfig()) == {}
    kw = get_task("semantic").protocol(EvalConfig(mode="slide", crop=(512, 1024)))
    assert kw["tile"] == (512, 1024) and kw["stride"] == (341, 682) and kw["blend"] == "mean"  # HRNet's 2/3
    cfg = load_config(None, ["eval.mode=slide", "eval.crop=[32, 48]", "eval.scales=[0.75, 1.25]", "eval.flip=true"],
                      require_model=False)
    assert get_task("semantic").protocol(cfg.eval)["tta"] == {"scales": (0.75, 1.25), "flip": True}


def test_eval_cli_protocol_flags_equal_the_python_call(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("pycocotools")
    data = {"type": "shapes", "root": str(tmp_path / "shapes"), "val": {"num_train": 2, "num_val": 2, "size": 64}}
    cfg_path = tmp_path / "data.yaml"
    cfg_path.write_text(json.dumps({"data": data}))
    model = _model(num_classes=4)  # background + the three shapes
    ckpt = tmp_path / "m.safetensors"
    segzoo.save(model, ckpt)
    main = runpy.run_path(str(ROOT / "tools" / "eval.py"), run_name="eval_cli")["main"]
    argv = [str(ckpt), "--data", str(cfg_path), "--mode", "slide", "--crop", "48", "--stride", "16", "--scales",
            "0.75", "1", "--flip", "--pictures", "0", "--no-progress", "--out", str(tmp_path / "eval")]
    assert main(argv) == 0
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["protocol"] == {"mode": "slide", "crop": 48, "stride": 16, "resize": None, "scales": [0.75, 1.0],
                                   "flip": True}
    ds = build_dataset(data_config(data), "val", CLASS_MAP, train=False)
    ref = evaluate(model, ds, tile=(48, 48), stride=16, blend="mean", tta={"scales": (0.75, 1.0), "flip": True})
    assert written["metrics"]["miou"] == pytest.approx(ref["metrics"]["miou"])
    image = ds[0][0][None]
    with torch.no_grad():  # the flags changed the protocol: other probabilities than the whole image's
        assert not torch.allclose(semantic_probs(model, image, tile=(48, 48), stride=16, blend="mean",
                                                 tta={"scales": (0.75, 1.0), "flip": True}),
                                  semantic_probs(model, image))
    assert main([*argv[:3], "--tile", "32", "--mode", "slide", "--crop", "48", "--no-progress",
                 "--out", str(tmp_path / "e2")]) == 2  # two ways to set the same thing
