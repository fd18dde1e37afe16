import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import segzoo
from segzoo.inference import load_image, sliding_window, tile_origins
from segzoo.models.base import SegmentationModel


class LocalFCN(SegmentationModel):
    """Three 3x3 convolutions: each output pixel sees a 7 x 7 window (radius 3)."""

    def __init__(self, num_classes=3):
        super().__init__(num_classes)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, num_classes, 3, padding=1))

    def forward_logits(self, x, with_aux=False):
        return self.body(x), None


class BrightBoxDetector(nn.Module):
    """Fake detector following the forward contract: one box around pixels brighter than 0.5."""

    task = "instance"

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = []
        for im in images:
            fg = im.mean(0) > 0.5
            if not fg.any():
                out.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                            "labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, *fg.shape)})
                continue
            ys, xs = fg.nonzero(as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
            out.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1]),
                        "masks": fg[None].float()})
        return out


def _safe_pixels(h, w, tile, overlap, r):
    """Pixels at least r from every inner tile edge of every tile covering them."""
    safe = torch.ones(h, w, dtype=torch.bool)
    for y in tile_origins(h, tile, overlap):
        for x in tile_origins(w, tile, overlap):
            inner = torch.zeros(h, w, dtype=torch.bool)
            y0, y1 = y + (r if y > 0 else 0), y + tile - (r if y + tile < h else 0)
            x0, x1 = x + (r if x > 0 else 0), x + tile - (r if x + tile < w else 0)
            inner[y0:y1, x0:x1] = True
            covered = torch.zeros(h, w, dtype=torch.bool)
            covered[y : y + tile, x : x + tile] = True
            safe &= ~covered | inner
    return safe


def test_tile_origins_cover_the_image():
    assert tile_origins(160, 64, 0.25) == [0, 48, 96]
    assert tile_origins(50, 64, 0.25) == [0]
    assert tile_origins(100, 64, 0.5) == [0, 32, 36]


def test_tiled_matches_full_image_away_from_tile_borders():
    model = LocalFCN().eval()
    image = torch.rand(3, 150, 170)
    full = segzoo.predict(model, image)
    tiled = segzoo.predict(model, image, tile=64, overlap=0.25)
    safe = _safe_pixels(150, 170, 64, 0.25, r=3)
    assert safe.float().mean() > 0.5
    diff = (full["probs"] - tiled["probs"]).abs()
    assert diff[:, safe].max() < 1e-5
    assert diff[:, ~safe].max() > 1e-4  # near tile borders the zero padding shows: the check has teeth
    assert torch.equal(full["mask"][safe], tiled["mask"][safe])
    # blended logits straight from sliding_window
    logits = sliding_window(model, image[None], tile=(64, 80), overlap=0.5)
    assert logits.shape == (3, 150, 170)


def test_real_model_tile_larger_than_image_is_exact():
    model = segzoo.build("fcn_resnet50", num_classes=4, backbone="resnet18").eval()
    image = torch.rand(3, 64, 72)
    with torch.no_grad():
        ref = model(image[None])[0].softmax(0)
    out = segzoo.predict(model, image, tile=96)
    assert out["mask"].dtype == torch.int64 and out["mask"].shape == (64, 72)
    torch.testing.assert_close(out["probs"], ref, atol=1e-5, rtol=1e-4)
    assert out["probs"].sum(0).allclose(torch.ones(64, 72), atol=1e-5)


def test_flip_and_multiscale_tta_average_probabilities():
    model = LocalFCN().eval()
    image = torch.rand(3, 40, 48)
    x = image[None]
    with torch.no_grad():
        p = model(x)[0].softmax(0)
        pf = model(x.flip(-1)).flip(-1)[0].softmax(0)
        half = torch.nn.functional.interpolate(x, size=(20, 24), mode="bilinear", antialias=True)
        ph = torch.nn.functional.interpolate(model(half), size=(40, 48), mode="bilinear")[0].softmax(0)
    torch.testing.assert_close(segzoo.predict(model, image, tta="flip")["probs"], (p + pf) / 2, atol=1e-5, rtol=0)
    out = segzoo.predict(model, image, tta={"scales": (0.5, 1.0)})["probs"]
    torch.testing.assert_close(out, (ph + p) / 2, atol=1e-5, rtol=0)
    assert not torch.allclose(out, p, atol=1e-3)
    with pytest.raises(ValueError, match="unknown tta"):
        segzoo.predict(model, image, tta="rotate")


def test_image_inputs_and_training_mode_restored(tmp_path):
    model = LocalFCN().train()
    arr = (np.random.rand(30, 40, 3) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    ref = segzoo.predict(model, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    for src in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(arr), arr,
                torch.from_numpy(arr).permute(2, 0, 1)):
        torch.testing.assert_close(segzoo.predict(model, src)["probs"], ref["probs"])
    assert model.training
    outs = segzoo.predict(model, [arr, arr[:20]])
    assert [o["mask"].shape for o in outs] == [(30, 40), (20, 40)]
    assert load_image(Image.fromarray(arr[..., 0])).shape == (3, 30, 40)
    with pytest.raises(FileNotFoundError):
        segzoo.predict(model, tmp_path / "missing.png")


def test_detection_tiles_are_merged_with_nms():
    model = BrightBoxDetector()
    image = torch.zeros(3, 100, 100)
    image[:, 40:56, 42:58] = 1.0  # inside 4 overlapping tiles (origins 0 and 36 on each axis)
    full = segzoo.predict(model, image)
    tiled = segzoo.predict(model, image, tile=64, overlap=0.25)
    assert full["boxes"].tolist() == [[42.0, 40.0, 58.0, 56.0]]
    assert tiled["boxes"].tolist() == full["boxes"].tolist()
    assert tiled["labels"].tolist() == [1] and tiled["masks"].shape == (1, 100, 100)
    # tiled masks are per-detection crops (segzoo.slicing.CropMasks), the same pixels
    assert torch.equal(tiled["masks"].dense(), (full["masks"].reshape(1, 100, 100) > 0.5).float())
    with pytest.raises(ValueError, match="semantic models only"):
        segzoo.predict(model, image, tta="flip")


def test_auto_tile_tiles_only_large_semantic_images():
    from segzoo.inference import AUTO_TILE_PIXELS, auto_tile

    big = int(AUTO_TILE_PIXELS**0.5) + 1
    assert auto_tile("semantic", "auto", big, big) == (879, 879)  # 2 x 2 tiles fitted to 1537 px
    assert auto_tile("semantic", "auto", 1024, 1024) is None
    assert auto_tile("detection", "auto", 4096, 4096) is None  # detections are tiled only on request
    assert auto_tile("semantic", None, 4096, 4096) is None and auto_tile("semantic", 256, 64, 64) == 256
    with pytest.raises(ValueError, match='"auto"'):
        auto_tile("semantic", "big", 64, 64)
    with pytest.raises(ValueError, match="overlap"):
        auto_tile("semantic", "auto", 4096, 4096, overlap=1.5)


@pytest.mark.parametrize("side", [1537, 2048, 2049, 2500, 3000, 4096, 5000])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_auto_tiles_are_fitted_to_the_image(side, overlap):
    """As many tiles per axis as AUTO_TILE-pixel tiles would need, none larger, each overlapping its neighbour
    by at least what was asked, covering the image: fewer pixels per forward than fixed tiles."""
    from segzoo.inference import AUTO_TILE, auto_tile

    th, tw = auto_tile("semantic", "auto", side, 1600, overlap=overlap)
    for size, t in ((side, th), (1600, tw)):
        fixed, fitted = tile_origins(size, AUTO_TILE, overlap), tile_origins(size, t, overlap)
        assert t <= AUTO_TILE and len(fitted) == len(fixed)
        assert fitted[0] == 0 and fitted[-1] + t == size  # covered, the last tile on the border
        gaps = [b - a for a, b in zip(fitted, fitted[1:])]
        assert all(t - g >= int(overlap * t) - 1 for g in gaps)  # the overlap asked for (stride rounding aside)
        assert len(fitted) * t <= len(fixed) * min(AUTO_TILE, size)
    assert (th, tw) != (AUTO_TILE, AUTO_TILE) or side <= AUTO_TILE


def test_predict_by_default_runs_large_semantic_images_in_tiles(monkeypatch):
    import segzoo.inference as inference

    monkeypatch.setattr(inference, "AUTO_TILE_PIXELS", 96 * 96)
    monkeypatch.setattr(inference, "AUTO_TILE", 64)
    torch.manual_seed(0)
    model = LocalFCN().eval()
    seen = []
    model.body.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    image = torch.rand(3, 128, 160)
    auto = segzoo.predict(model, image, fast=False)
    # never the whole 128 x 160 image at once: 3 x 3 tiles of at most 64 px, fitted to the image (52 x 64)
    assert len(seen) == 9 and set(seen) == {(52, 64)}
    batches = []
    model.body.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    segzoo.predict(model, image, fast=False)
    assert set(batches) == {1}  # one tile per forward: a batch of tiles would hold more than the image
    seen.clear()
    whole = segzoo.predict(model, image, tile=None, fast=False)
    assert seen == [(128, 160)]
    assert auto["probs"].shape == whole["probs"].shape == (3, 128, 160)
    assert (auto["mask"] == whole["mask"]).float().mean() > 0.95  # the blend differs only near tile borders
    seen.clear()
    segzoo.predict(model, torch.rand(3, 80, 96), fast=False)  # below the bound: whole
    assert seen == [(80, 96)]


def test_infer_tile_argument():
    import argparse

    from segzoo.cli.infer import tile_argument

    assert tile_argument("auto") == "auto" and tile_argument("none") is None and tile_argument("512") == 512
    for bad in ("big", "-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="--tile"):
            tile_argument(bad)
