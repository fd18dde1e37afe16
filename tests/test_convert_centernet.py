"""Official CenterNet checkpoints -> segzoo: key coverage, BGR/mean/std convention, CLI.

The official key names and shapes in tests/data/centernet_<arch>.txt were written from
reading the official code (see tests/data/centernet_official_keys.py).
"""

from pathlib import Path

import pytest
import torch

import segzoo
from segzoo.convert import from_centernet_official
from segzoo.convert.centernet import OFFICIAL_BGR

DATA = Path(__file__).parent / "data"
ARCHS = {"res_18": "centernet_resnet18", "res_50": "centernet_resnet50",
         "resdcn_18": "centernet_resdcn18", "resdcn_101": "centernet_resdcn101",
         "dla_34": "centernet_dla34", "dlav0_34": "centernet_dla34_nodcn"}
# official keys that have no segzoo counterpart: the DLA classifier and two unused projections
DROPPED = ("base.fc.", "base.level3.project.", "base.level4.project.")


def official_state(arch: str, num_classes: int = 80, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for line in (DATA / f"centernet_{arch}.txt").read_text().splitlines():
        key, _, shape = line.partition(" ")
        shape = tuple(int(s) for s in shape.split(",")) if shape else ()
        if key.startswith("hm.2."):
            shape = (num_classes,) + shape[1:]
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) * 0.4 + 0.8
        elif key.endswith(("running_mean", ".bias")):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BatchNorm weight
            state[key] = 1 + torch.randn(shape, generator=g) * 0.1
        else:  # conv weights scaled by fan-in so that activations keep their scale
            fan_in = shape[1] * shape[2] * shape[3] * (4 if shape[1] == 1 else 1)
            # DCN offsets of about a pixel: enough to exercise the bilinear sampling
            std = (0.05 if "conv_offset_mask" in key else 1.0) / fan_in ** 0.5
            state[key] = torch.randn(shape, generator=g) * std
    return state


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_official_key_maps(arch):
    state = official_state(arch)
    wrapped = {"epoch": 140, "state_dict": {"module." + k: v for k, v in state.items()}}
    model = from_centernet_official(wrapped, ARCHS[arch])
    own = model.state_dict()
    used = [k for k in state if not k.startswith(DROPPED)]
    assert len(used) == len(own), "every segzoo tensor comes from exactly one official key"
    # every official tensor is found, unchanged (or with reversed input channels), in the model
    values = {(tuple(v.shape), float(v.double().sum()), float(v.double().abs().sum())) for v in own.values()}
    for k in used:
        v = state[k]
        sig = (tuple(v.shape), float(v.double().sum()), float(v.double().abs().sum()))
        assert sig in values, f"official key {k} did not reach the model"
    assert model.num_classes == 80 and model.spec.kwargs["mean"] == list(OFFICIAL_BGR["coco"][0][::-1])


def _official_forward(model, name, rgb, convention="coco"):
    """The same weights as the official network: BGR input, official normalisation."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in OFFICIAL_BGR[convention])
    ref = segzoo.build(name, num_classes=model.num_classes, head_conv=model.head.size[0].out_channels,
                       mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]).eval()
    state = model.state_dict()
    first = "backbone.body.conv1.weight" if "backbone.body.conv1.weight" in state \
        else "backbone.body.base_layer.0.weight"
    state[first] = state[first].flip(1)  # back to the official BGR filter order
    ref.load_state_dict(state)
    bgr = rgb.flip(1) * 255  # what cv2.imread gives
    official_input = (bgr / 255 - mean) / std
    with torch.no_grad():
        return ref.forward_maps(official_input)


@pytest.mark.parametrize("arch,convention", [("res_18", "coco"), ("dla_34", "coco"),
                                             ("resdcn_18", "pascal"), ("dlav0_34", "coco")])
def test_rgb_model_gives_official_outputs(arch, convention):
    classes = 20 if convention == "pascal" else 80
    model = from_centernet_official(official_state(arch, classes), ARCHS[arch])
    assert model.spec.kwargs["std"] == list(OFFICIAL_BGR[convention][1][::-1])
    rgb = torch.rand(1, 3, 64, 64)
    x, _ = model.preprocess(rgb)
    with torch.no_grad():
        ours = model.forward_maps(x)
    ref = _official_forward(model, ARCHS[arch], rgb, convention)
    tol = {}
    for k in ("heatmap", "size", "offset"):
        tol[k] = 1e-4 * ref[k].abs().max()
        assert tol[k] > 0
        assert (ours[k] - ref[k]).abs().max() <= tol[k], k
    # and the channel order matters: feeding RGB where BGR is expected changes the maps
    swapped = _official_forward(model, ARCHS[arch], rgb.flip(1), convention)
    assert (swapped["heatmap"] - ours["heatmap"]).abs().max() > 10 * tol["heatmap"]


def test_mismatched_names_and_bad_dicts():
    state = official_state("res_18")
    with pytest.raises(ValueError, match="centernet_resnet18"):
        from_centernet_official(state, "centernet_resdcn18")
    with pytest.raises(ValueError, match="not a CenterNet model"):
        from_centernet_official(state, "fcn_resnet50")
    with pytest.raises(KeyError, match="hm.2.weight"):
        from_centernet_official({k: v for k, v in state.items() if not k.startswith("hm.")},
                                "centernet_resnet18")
    with pytest.raises(KeyError, match="unexpected key"):
        from_centernet_official({**state, "foo.weight": torch.zeros(1)}, "centernet_resnet18")
    del state["bn1.num_batches_tracked"]  # pre-0.4.1 checkpoints: filled in
    from_centernet_official(state, "centernet_resnet18")


def test_cli_converts_and_reloads(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_cli", Path(__file__).parents[1] / "tools" / "convert.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    state = official_state("res_18")
    src, dst = tmp_path / "ctdet_coco_res18.pth", tmp_path / "res18.safetensors"
    torch.save({"epoch": 70, "state_dict": {"module." + k: v for k, v in state.items()}}, src)
    assert cli.main(["--from", "centernet-official", "--name", "centernet_resnet18", str(src), str(dst)]) == 0
    model = segzoo.load(dst)
    direct = from_centernet_official(state, "centernet_resnet18")
    assert model.spec == direct.spec
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x)[0], direct(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
