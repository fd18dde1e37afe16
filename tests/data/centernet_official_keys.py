"""Write the state-dict keys and shapes of the official CenterNet networks as test data.

Written from reading the official code (xingyizhou/CenterNet, ``src/lib/models/networks``:
``msra_resnet.py``, ``resnet_dcn.py``, ``pose_dla_dcn.py``, ``dlav0.py`` and DCNv2's
``dcn_v2.py``), as naming rules rather than modules, so that the converter tests do not
depend on segzoo's own layout. Run ``python tests/data/centernet_official_keys.py`` to
regenerate ``centernet_<arch>.txt`` (one ``key shape`` line per tensor, 80 classes).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def bn(p, c):
    return {f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,),
            f"{p}.running_var": (c,), f"{p}.num_batches_tracked": ()}


def conv(p, cout, cin, k, bias=False):
    out = {f"{p}.weight": (cout, cin, k, k)}
    if bias:
        out[f"{p}.bias"] = (cout,)
    return out


def dcn(p, cout, cin):
    """DCNv2 ``DCN(cin, cout, 3)``: weight, bias and a 27-output conv_offset_mask."""
    return {f"{p}.weight": (cout, cin, 3, 3), f"{p}.bias": (cout,),
            **conv(f"{p}.conv_offset_mask", 27, cin, 3, bias=True)}


def heads(cin, head_conv, classes=80):
    out = {}
    for name, n in (("hm", classes), ("wh", 2), ("reg", 2)):
        out.update(conv(f"{name}.0", head_conv, cin, 3, bias=True))
        out.update(conv(f"{name}.2", n, head_conv, 1, bias=True))
    return out


def resnet(depth):
    bottleneck = depth >= 50
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    out = {**conv("conv1", 64, 3, 7), **bn("bn1", 64)}
    inplanes = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        exp = 4 if bottleneck else 1
        for b in range(n):
            p = f"layer{li}.{b}"
            if bottleneck:
                out.update({**conv(f"{p}.conv1", planes, inplanes, 1), **bn(f"{p}.bn1", planes),
                            **conv(f"{p}.conv2", planes, planes, 3), **bn(f"{p}.bn2", planes),
                            **conv(f"{p}.conv3", planes * 4, planes, 1), **bn(f"{p}.bn3", planes * 4)})
            else:
                out.update({**conv(f"{p}.conv1", planes, inplanes, 3), **bn(f"{p}.bn1", planes),
                            **conv(f"{p}.conv2", planes, planes, 3), **bn(f"{p}.bn2", planes)})
            if b == 0 and (li > 1 or inplanes != planes * exp):
                out.update({**conv(f"{p}.downsample.0", planes * exp, inplanes, 1),
                            **bn(f"{p}.downsample.1", planes * exp)})
            inplanes = planes * exp
    return out, inplanes


def res(depth):
    """``msra_resnet``: three ConvTranspose2d(4, stride 2, no bias) + BN, 256 each."""
    out, c = resnet(depth)
    for i in range(3):
        out[f"deconv_layers.{3 * i}.weight"] = (c, 256, 4, 4)  # (in, out, k, k)
        out.update(bn(f"deconv_layers.{3 * i + 1}", 256))
        c = 256
    return {**out, **heads(256, 64)}


def resdcn(depth):
    """``resnet_dcn``: per stage DCN, BN, ReLU, ConvTranspose2d, BN, ReLU; 256/128/64."""
    out, c = resnet(depth)
    for i, w in enumerate((256, 128, 64)):
        out.update(dcn(f"deconv_layers.{6 * i}", w, c))
        out.update(bn(f"deconv_layers.{6 * i + 1}", w))
        out[f"deconv_layers.{6 * i + 3}.weight"] = (w, w, 4, 4)
        out.update(bn(f"deconv_layers.{6 * i + 4}", w))
        c = w
    return {**out, **heads(64, 64)}


def tree(p, levels, cin, cout, level_root, root_dim=0):
    """The official DLA ``Tree``: a ``project`` whenever cin != cout, even when unused."""
    out = {}
    if root_dim == 0:
        root_dim = 2 * cout
    if level_root:
        root_dim += cin
    if levels == 1:
        for name, a in (("tree1", cin), ("tree2", cout)):
            out.update({**conv(f"{p}.{name}.conv1", cout, a, 3), **bn(f"{p}.{name}.bn1", cout),
                        **conv(f"{p}.{name}.conv2", cout, cout, 3), **bn(f"{p}.{name}.bn2", cout)})
        out.update({**conv(f"{p}.root.conv", cout, root_dim, 1), **bn(f"{p}.root.bn", cout)})
    else:
        out.update(tree(f"{p}.tree1", levels - 1, cin, cout, False, 0))
        out.update(tree(f"{p}.tree2", levels - 1, cout, cout, False, root_dim + cout))
    if cin != cout:
        out.update({**conv(f"{p}.project.0", cout, cin, 1), **bn(f"{p}.project.1", cout)})
    return out


def dla34_base(p="base"):
    ch = (16, 32, 64, 128, 256, 512)
    out = {**conv(f"{p}.base_layer.0", 16, 3, 7), **bn(f"{p}.base_layer.1", 16),
           **conv(f"{p}.level0.0", 16, 16, 3), **bn(f"{p}.level0.1", 16),
           **conv(f"{p}.level1.0", 32, 16, 3), **bn(f"{p}.level1.1", 32)}
    for lv, (levels, root) in enumerate(((1, False), (2, True), (2, True), (1, True)), start=2):
        out.update(tree(f"{p}.level{lv}", levels, ch[lv - 1], ch[lv], root))
    out.update(conv(f"{p}.fc", 1000, 512, 1, bias=True))  # the ImageNet classifier, unused
    return out


# DLA-Up on (64, 128, 256, 512) at scales (1, 2, 4, 8): (out, inputs, up factors) per ida_i
DLA_UP = ((256, (256, 512), (1, 2)), (128, (128, 256, 256), (1, 2, 2)),
          (64, (64, 128, 128, 128), (1, 2, 2, 2)))


def dla_34():
    """``pose_dla_dcn``: DeformConv = (actf.0 BN, conv DCN); IDA-Up (64; 64, 128, 256; 1, 2, 4)."""
    out = dla34_base()

    def ida(p, o, chans, ups):
        for i in range(1, len(chans)):
            out.update({**dcn(f"{p}.proj_{i}.conv", o, chans[i]), **bn(f"{p}.proj_{i}.actf.0", o)})
            out[f"{p}.up_{i}.weight"] = (o, 1, 2 * ups[i], 2 * ups[i])
            out.update({**dcn(f"{p}.node_{i}.conv", o, o), **bn(f"{p}.node_{i}.actf.0", o)})

    for i, (o, chans, ups) in enumerate(DLA_UP):
        ida(f"dla_up.ida_{i}", o, chans, ups)
    ida("ida_up", 64, (64, 128, 256), (1, 2, 4))
    return {**out, **heads(64, 256)}


def dlav0_34():
    """``dlav0``: 1x1 proj (when channels differ), depthwise up (factor > 1), 3x3 node on a concat."""
    out = dla34_base()
    for i, (o, chans, ups) in enumerate(DLA_UP):
        p = f"dla_up.ida_{i}"
        for j, c in enumerate(chans):
            if c != o:
                out.update({**conv(f"{p}.proj_{j}.0", o, c, 1), **bn(f"{p}.proj_{j}.1", o)})
            if ups[j] != 1:
                out[f"{p}.up_{j}.weight"] = (o, 1, 2 * ups[j], 2 * ups[j])
        for j in range(1, len(chans)):
            out.update({**conv(f"{p}.node_{j}.0", o, 2 * o, 3), **bn(f"{p}.node_{j}.1", o)})
    return {**out, **heads(64, 256)}


ARCHS = {"res_18": lambda: res(18), "res_50": lambda: res(50), "resdcn_18": lambda: resdcn(18),
         "resdcn_101": lambda: resdcn(101), "dla_34": dla_34, "dlav0_34": dlav0_34}


def main() -> None:
    for arch, fn in ARCHS.items():
        lines = [f"{k} {','.join(map(str, s))}" for k, s in fn().items()]
        (HERE / f"centernet_{arch}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
