"""Official HRNet-Semantic-Segmentation checkpoints -> segzoo.

``tests/fixtures/hrnet_official_*.txt`` list the names and shapes of the official models'
state dicts (``seg_hrnet.py`` of the pytorch-v1.1 branch, ``seg_hrnet_ocr.py`` of the
HRNet-OCR branch, Cityscapes: 19 classes), one ``name shape`` line per tensor.
"""

import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import segzoo
from segzoo.convert import from_hrnet_official
from segzoo.layers import resize_concat
from segzoo.models.hrnet import map_hrnet_official

DATA = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(width=16, stage1_blocks=1, stage1_channels=32, stage_modules=(1, 1, 1), stage_blocks=2)


def official_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (DATA / f"hrnet_official_{variant}.txt").read_text().splitlines():
        name, _, shape = line.partition(" ")
        out[name] = tuple(int(s) for s in shape.split(",") if s)
    return out


def random_official(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(s, generator=g) + 0.5
        else:
            state[k] = torch.randn(s, generator=g) * 0.1
    return state


def as_released(state: dict, old_pytorch: bool = False, wrap: bool = False) -> dict:
    """What the official training script saves: FullModel's state dict."""
    out = {"model." + k: v for k, v in state.items()
           if not (old_pytorch and k.endswith("num_batches_tracked"))}
    out["loss.criterion.weight"] = torch.rand(19)
    return {"state_dict": out} if wrap else out


@pytest.mark.parametrize("variant, name", [
    ("w18_small_v1", "hrnet_w18_small"),
    ("w18_small_v2", "hrnet_w18_small_v2"),
    ("w18", "hrnet_w18"),
    ("w32", "hrnet_w32"),
    ("w48", "hrnet_w48"),
    ("w48_ocr", "hrnet_w48_ocr"),
])
def test_every_official_key_maps(variant, name):
    shapes = official_shapes(variant)
    meta = {"model." + k: torch.empty(s, device="meta") for k, s in shapes.items()}
    meta["loss.criterion.weight"] = torch.empty(19, device="meta")
    mapped, num_classes, is_ocr = map_hrnet_official(meta)
    assert num_classes == 19 and is_ocr == name.endswith("_ocr")
    own = {k: tuple(v.shape) for k, v in segzoo.build(name).state_dict().items()}
    assert len(mapped) == len(shapes) == len(own)  # none left over, none missing
    assert {k: tuple(v.shape) for k, v in mapped.items()} == own


@pytest.mark.parametrize("old_pytorch, wrap", [(False, False), (True, True)])
def test_converted_weights_are_the_official_ones(old_pytorch, wrap):
    official = random_official(official_shapes("w18_small_v1"))
    model = from_hrnet_official(as_released(official, old_pytorch, wrap), "hrnet_w18_small")
    own = model.state_dict()
    torch.testing.assert_close(own["head.3.weight"], official["last_layer.3.weight"])
    torch.testing.assert_close(
        own["backbone.stage4.0.fuse_layers.3.0.2.0.weight"],
        official["stage4.0.fuse_layers.3.0.2.0.weight"],
    )
    expected_tracked = 0 if old_pytorch else 7
    assert int(own["backbone.bn1.num_batches_tracked"]) == expected_tracked
    assert model.num_classes == 19 and not model.training


def _to_official(state: dict) -> dict:
    """segzoo names -> official names (the converter's inverse, written out for the test)."""
    renames = [("head.aux.", "aux_head."), ("head.bottleneck.", "conv3x3_ocr."),
               ("head.classifier.", "cls_head."),
               ("head.fuse.0.", "ocr_distri_head.conv_bn_dropout.0."),
               ("head.fuse.1.", "ocr_distri_head.conv_bn_dropout.1.0.")]
    for src, dst in (("query", "f_pixel"), ("key", "f_object"), ("value", "f_down"), ("project", "f_up")):
        base = "ocr_distri_head.object_context_block." + dst
        renames += [(f"head.attention.{src}.0.", f"{base}.0."), (f"head.attention.{src}.1.", f"{base}.1.0."),
                    (f"head.attention.{src}.3.", f"{base}.2."), (f"head.attention.{src}.4.", f"{base}.3.0.")]
    renames.append(("head.", "last_layer."))
    out = {}
    for k, v in state.items():
        if k.startswith("backbone."):
            out[k.removeprefix("backbone.")] = v
            continue
        src, dst = next(r for r in renames if k.startswith(r[0]))
        out[dst + k.removeprefix(src)] = v
    return out


def _randomize(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def test_converted_plain_model_gives_same_logits():
    ref = _randomize(segzoo.build("hrnet_w18_small", num_classes=7))
    model = from_hrnet_official({"state_dict": as_released(_to_official(ref.state_dict()))}, "hrnet_w18_small")
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def _official_ocr_head(w: dict, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official OCR head's computation on official-named weights (eval mode)."""
    def conv(x, p, padding=0):
        return F.conv2d(x, w[p + ".weight"], w.get(p + ".bias"), padding=padding)

    def bn(x, p, relu=True):
        y = F.batch_norm(x, w[p + ".running_mean"], w[p + ".running_var"], w[p + ".weight"], w[p + ".bias"])
        return y.relu() if relu else y

    aux = conv(bn(conv(feats, "aux_head.0"), "aux_head.1"), "aux_head.3")
    x = bn(conv(feats, "conv3x3_ocr.0", padding=1), "conv3x3_ocr.1")
    n, c, h, wd = x.shape
    probs = F.softmax(aux.view(n, aux.shape[1], -1), dim=2)  # spatial softmax per class
    context = torch.matmul(probs, x.view(n, c, -1).permute(0, 2, 1)).permute(0, 2, 1).unsqueeze(3)
    o = "ocr_distri_head.object_context_block."

    def two(t, name):
        t = bn(conv(t, o + name + ".0"), o + name + ".1.0")
        return bn(conv(t, o + name + ".2"), o + name + ".3.0")

    q = two(x, "f_pixel").view(n, -1, h * wd).permute(0, 2, 1)
    k = two(context, "f_object").view(n, q.shape[2], -1)
    v = bn(conv(context, o + "f_down.0"), o + "f_down.1.0").view(n, q.shape[2], -1).permute(0, 2, 1)
    sim = F.softmax(torch.matmul(q, k) * q.shape[2] ** -0.5, dim=-1)
    ctx = torch.matmul(sim, v).permute(0, 2, 1).reshape(n, q.shape[2], h, wd)
    ctx = bn(conv(ctx, o + "f_up.0"), o + "f_up.1.0")
    y = conv(torch.cat([ctx, x], 1), "ocr_distri_head.conv_bn_dropout.0")
    y = bn(y, "ocr_distri_head.conv_bn_dropout.1.0")
    return conv(y, "cls_head"), aux


def test_converted_ocr_model_matches_official_head():
    kwargs = dict(SMALL, mid_channels=32, key_channels=16)
    ref = _randomize(segzoo.build("hrnet_w48_ocr", num_classes=6, **kwargs))
    official = _to_official(ref.state_dict())
    model = from_hrnet_official(as_released(official), "hrnet_w48_ocr", **SMALL)
    assert model.spec.kwargs["mid_channels"] == 32 and model.align_corners
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
        feats = resize_concat(model.backbone(model.normalize(x)), model.align_corners)
        out, aux = model.head(feats)
        expected_out, expected_aux = _official_ocr_head(official, feats)
    torch.testing.assert_close(out, expected_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(aux, expected_aux, rtol=1e-4, atol=1e-4)


def test_wrong_checkpoints_raise():
    plain = as_released(random_official(official_shapes("w18_small_v1")))
    with pytest.raises(ValueError, match="plain HRNetV2"):
        from_hrnet_official(plain, "hrnet_w48_ocr")
    with pytest.raises(ValueError, match="16 channels"):
        from_hrnet_official(plain, "hrnet_w18")
    with pytest.raises(KeyError, match="no HRNet layer"):
        from_hrnet_official({**plain, "model.extra.weight": torch.zeros(1)}, "hrnet_w18_small")
    imagenet = {k.removeprefix("model."): v for k, v in plain.items() if "last_layer" not in k}
    with pytest.raises(KeyError, match="backbone_weights"):
        from_hrnet_official(imagenet, "hrnet_w18_small")


def test_convert_cli(tmp_path):
    official = random_official(official_shapes("w18_small_v1"))
    src, dst = tmp_path / "hrnet_w18_small_v1_cityscapes.pth", tmp_path / "out.safetensors"
    torch.save({"state_dict": as_released(official, old_pytorch=True)}, src)
    cli = runpy.run_path(str(ROOT / "tools" / "convert.py"), run_name="convert_cli")
    assert cli["main"](["--from", "hrnet-official", "--name", "hrnet_w18_small", str(src), str(dst)]) == 0
    model = segzoo.load(dst)
    assert model.spec.name == "hrnet_w18_small" and model.num_classes == 19
    torch.testing.assert_close(model.state_dict()["head.0.bias"], official["last_layer.0.bias"])
