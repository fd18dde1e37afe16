"""Official CenterNet checkpoints -> segzoo: key coverage, BGR/mean/std convention, CLI.

The official key names and shapes in tests/fixtures/centernet_<arch>.txt were written from
reading the official code (see tests/fixtures/centernet_official_keys.py).
"""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

import segzoo
from segzoo.convert import from_centernet_official
from segzoo.models.centernet import OFFICIAL_BGR

DATA = Path(__file__).resolve().parents[1] / "fixtures"
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


def _bn(state, p, x):
    return F.batch_norm(x, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"],
                        state[f"{p}.bias"], training=False, eps=1e-5)


def _dcn(state, p, x):
    """DCNv2 ``DCN.forward``: o1, o2, mask = chunk(conv_offset_mask(x), 3); offset = cat(o1, o2)."""
    o1, o2, m = torch.chunk(F.conv2d(x, state[f"{p}.conv_offset_mask.weight"],
                                     state[f"{p}.conv_offset_mask.bias"], padding=1), 3, dim=1)
    return deform_conv2d(x, torch.cat((o1, o2), 1), state[f"{p}.weight"], state[f"{p}.bias"], padding=1,
                         mask=torch.sigmoid(m))


def _deform_block(state, p, x):  # official DeformConv: conv (DCN) then actf (BN, ReLU)
    return F.relu(_bn(state, f"{p}.actf.0", _dcn(state, f"{p}.conv", x)))


def _up(state, p, x):  # depthwise ConvTranspose2d(2f, stride f, padding f // 2)
    f = state[f"{p}.weight"].shape[-1] // 2
    return F.conv_transpose2d(x, state[f"{p}.weight"], stride=f, padding=f // 2, groups=x.shape[1])


def official_neck_and_heads(arch, state, feats):
    """The official forward after the backbone, written from the official code's order of
    operations on the official state dict (independent of segzoo's neck modules).

    feats: backbone maps; ResNet: [stride 32]; DLA: [stride 4, 8, 16, 32] (levels 2..5).
    """
    if arch.startswith("res_"):
        x = feats[-1]
        for i in range(3):
            x = F.relu(_bn(state, f"deconv_layers.{3 * i + 1}",
                           F.conv_transpose2d(x, state[f"deconv_layers.{3 * i}.weight"], stride=2, padding=1)))
    elif arch.startswith("resdcn_"):
        x = feats[-1]
        for i in range(3):
            x = F.relu(_bn(state, f"deconv_layers.{6 * i + 1}", _dcn(state, f"deconv_layers.{6 * i}", x)))
            x = F.conv_transpose2d(x, state[f"deconv_layers.{6 * i + 3}.weight"], stride=2, padding=1)
            x = F.relu(_bn(state, f"deconv_layers.{6 * i + 4}", x))
    elif arch == "dla_34":
        def ida_up(p, layers, startp, endp):  # IDAUp.forward: in place on the list
            for i in range(startp + 1, endp):
                j = i - startp
                layers[i] = _up(state, f"{p}.up_{j}", _deform_block(state, f"{p}.proj_{j}", layers[i]))
                layers[i] = _deform_block(state, f"{p}.node_{j}", layers[i] + layers[i - 1])

        layers = [None, None] + list(feats)  # levels 0..5; DLAUp(startp=2)
        out = [layers[-1]]
        for i in range(len(layers) - 2 - 1):
            ida_up(f"dla_up.ida_{i}", layers, len(layers) - i - 2, len(layers))
            out.insert(0, layers[-1])
        y = [out[i].clone() for i in range(5 - 2)]  # last_level 5, first_level 2
        ida_up("ida_up", y, 0, len(y))
        x = y[-1]
    else:  # dlav0_34
        def ida(p, layers):  # dlav0 IDAUp.forward -> (x, y)
            layers = list(layers)
            for i, t in enumerate(layers):
                if f"{p}.proj_{i}.0.weight" in state:
                    t = F.relu(_bn(state, f"{p}.proj_{i}.1", F.conv2d(t, state[f"{p}.proj_{i}.0.weight"])))
                if f"{p}.up_{i}.weight" in state:
                    t = _up(state, f"{p}.up_{i}", t)
                layers[i] = t
            x, y = layers[0], []
            for i in range(1, len(layers)):
                x = F.conv2d(torch.cat([x, layers[i]], 1), state[f"{p}.node_{i}.0.weight"], padding=1)
                x = F.relu(_bn(state, f"{p}.node_{i}.1", x))
                y.append(x)
            return x, y

        layers = list(feats)
        for i in range(len(layers) - 1):
            x, y = ida(f"dla_up.ida_{i}", layers[-i - 2:])
            layers[-i - 1:] = y
    out = {}
    for name, key in (("heatmap", "hm"), ("size", "wh"), ("offset", "reg")):
        h = F.relu(F.conv2d(x, state[f"{key}.0.weight"], state[f"{key}.0.bias"], padding=1))
        out[name] = F.conv2d(h, state[f"{key}.2.weight"], state[f"{key}.2.bias"])
    return out


def _official_forward(model, arch, state, rgb, convention="coco"):
    """The official network on its BGR input with the official normalisation.

    The body is timm's (its keys and layers are the official ResNet / DLA-34 ones) with
    the official, unflipped first convolution; the neck and heads are
    :func:`official_neck_and_heads` on the official state dict.
    """
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in OFFICIAL_BGR[convention])
    body = copy.deepcopy(model.backbone)
    first = "conv1.weight" if arch.startswith("res") else "base_layer.0.weight"
    body.body.state_dict()[first].copy_(state[first if arch.startswith("res") else "base." + first])
    bgr = rgb.flip(1) * 255  # what cv2.imread gives
    official_input = (bgr / 255 - mean) / std
    with torch.no_grad():
        return official_neck_and_heads(arch, state, body(official_input))


@pytest.mark.parametrize("arch,convention", [("res_18", "coco"), ("dla_34", "coco"),
                                             ("resdcn_18", "pascal"), ("dlav0_34", "coco")])
# the official forward is rebuilt from the official state dict, so this also checks the neck topology
def test_rgb_model_gives_official_outputs(arch, convention):
    classes = 20 if convention == "pascal" else 80
    state = official_state(arch, classes)
    model = from_centernet_official(state, ARCHS[arch])
    assert model.spec.kwargs["std"] == list(OFFICIAL_BGR[convention][1][::-1])
    rgb = torch.rand(1, 3, 64, 64)
    x, _ = model.preprocess(rgb)
    with torch.no_grad():
        ours = model.forward_maps(x)
    ref = _official_forward(model, arch, state, rgb, convention)
    tol = {}
    for k in ("heatmap", "size", "offset"):
        tol[k] = 1e-4 * ref[k].abs().max()
        assert tol[k] > 0
        assert (ours[k] - ref[k]).abs().max() <= tol[k], k
    # and the channel order matters: feeding RGB where BGR is expected changes the maps
    swapped = _official_forward(model, arch, state, rgb.flip(1), convention)
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
        "convert_cli", Path(__file__).parents[2] / "tools" / "convert.py")
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


def official_dla34_levels(state, x):
    """The official DLA-34 ``base`` forward (pose_dla_dcn ``DLA``/``Tree``/``Root``) on the
    official state dict; returns levels 2..5. Written from the official code's order of
    operations, independently of timm, to show that timm's ``dla34`` computes the same."""
    def cbr(p_conv, p_bn, t, stride=1, relu=True):
        w = state[f"{p_conv}.weight"]
        t = _bn(state, p_bn, F.conv2d(t, w, stride=stride, padding=w.shape[-1] // 2))
        return F.relu(t) if relu else t

    def block(p, t, stride, residual=None):  # BasicBlock(x, residual)
        residual = t if residual is None else residual
        out = cbr(f"{p}.conv1", f"{p}.bn1", t, stride)
        return F.relu(cbr(f"{p}.conv2", f"{p}.bn2", out, relu=False) + residual)

    def tree(p, t, levels, stride, level_root, children=None):
        children = [] if children is None else children
        bottom = F.max_pool2d(t, stride, stride) if stride > 1 else t
        residual = cbr(f"{p}.project.0", f"{p}.project.1", bottom, relu=False) \
            if f"{p}.project.0.weight" in state else bottom
        if level_root:
            children.append(bottom)
        if levels == 1:
            x1 = block(f"{p}.tree1", t, stride, residual)
            x2 = block(f"{p}.tree2", x1, 1)
            return cbr(f"{p}.root.conv", f"{p}.root.bn", torch.cat([x2, x1, *children], 1))
        x1 = tree(f"{p}.tree1", t, levels - 1, stride, False)  # the residual above is unused
        children.append(x1)
        return tree(f"{p}.tree2", x1, levels - 1, 1, False, children)

    t = cbr("base.base_layer.0", "base.base_layer.1", x)
    t = cbr("base.level0.0", "base.level0.1", t)
    t = cbr("base.level1.0", "base.level1.1", t, stride=2)
    out = []
    for lv, (levels, root) in enumerate(((1, False), (2, True), (2, True), (1, True)), start=2):
        t = tree(f"base.level{lv}", t, levels, 2, root)
        out.append(t)
    return out


def test_timm_dla34_body_is_the_official_dla34():
    state = official_state("dla_34")
    model = from_centernet_official(state, "centernet_dla34")
    rgb = torch.rand(1, 3, 64, 64)
    x, _ = model.preprocess(rgb)
    with torch.no_grad():
        ours = model.backbone(x)
        ref = official_dla34_levels(state, x.flip(1))  # the official first conv takes BGR
    assert len(ours) == len(ref) == 4
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_cli_model_kwargs_reach_the_converter(tmp_path, capsys):
    """``--model-kwargs`` passes what the file does not say (here the official pascal convention of 80-class
    weights); malformed or unknown pairs stop before anything is written."""
    from segzoo.cli import command

    cli = command("convert")
    src, dst = tmp_path / "ctdet.pth", tmp_path / "res18.safetensors"
    torch.save(official_state("res_18"), src)
    args = ["--from", "centernet-official", "--name", "centernet_resnet18", str(src), str(dst)]
    assert cli(args + ["--model-kwargs", "convention=pascal"]) == 0
    mean = segzoo.load(dst).spec.mean
    assert mean == pytest.approx(OFFICIAL_BGR["pascal"][0][::-1])  # BGR -> RGB
    assert mean != pytest.approx(OFFICIAL_BGR["coco"][0][::-1])
    dst.unlink()
    for bad, said in ((["convention"], "KEY=VALUE"), (["convention=pascal", "convention=coco"], "twice"),
                      (["num_classes=3"], "read from the source"), (["no_such_argument=1"], "no_such_argument"),
                      (["convention="], "no value")):
        assert cli(args + ["--model-kwargs", *bad]) != 0
        assert said in capsys.readouterr().err
        assert not dst.exists()
