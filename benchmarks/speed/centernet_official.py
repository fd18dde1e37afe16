"""The official CenterNet ``res_*`` and ``resdcn_*`` detectors, restated as a benchmark anchor.

No CenterNet is installable with pip, so the peer that segzoo's ``centernet_resnet18`` and
``centernet_resdcn18`` are timed against is the official code (xingyizhou/CenterNet, MIT) as its
README runs it: ``demo.py`` / ``test.py`` build ``CtdetDetector``, whose ``process`` calls the network
in eval mode under ``torch.no_grad()``, applies the sigmoid to ``hm`` and calls ``ctdet_decode``.
This module restates, in its own words (no code is copied), what those steps compute:

* the network of ``src/lib/models/networks/msra_resnet.py`` (``res_*``): torchvision's ResNet up to
  ``layer4`` (the official code builds the same blocks and loads torchvision's ImageNet files), then
  three ``ConvTranspose2d(kernel 4, stride 2, padding 1, output_padding 0, no bias)`` + BatchNorm +
  ReLU stages to 256, 256 and 256 channels, and the heads ``hm``, ``wh``, ``reg``, each
  ``Conv2d(3x3, head_conv, bias) -> ReLU -> Conv2d(1x1, outputs, bias)`` (``head_conv`` 64);
* the network of ``resnet_dcn.py`` (``resdcn_*``): the same body, then per stage a 3x3 DCNv2
  (DCNv2's ``DCN``: a ``conv_offset_mask`` convolution with 27 outputs split in three, offsets
  ``cat(o1, o2)``, mask ``sigmoid(m)``) + BatchNorm + ReLU, then the transposed convolution + BatchNorm +
  ReLU, to 256, 128 and 64 channels; on the CPU, DCNv2's CUDA kernel is replaced by
  ``torchvision.ops.deform_conv2d``, which computes the same modulated deformable convolution;
* ``ctdet_decode`` of ``src/lib/models/decode.py``: a 3x3 max-pool keeps the local peaks of the
  sigmoid heatmap, the top ``K`` (100) scores are taken per class and then over all classes, and each
  box is its cell plus ``reg`` with ``wh`` around it, in output cells. ``post_process`` maps the cells
  back through the test-time affine transform; on an input that needed no resizing this is a
  multiplication by the output stride (``down_ratio`` 4), done here on the detections tensor (the
  official per-class regrouping in numpy is left out).

The modules keep the official attribute names (``conv1``, ``layer1`` ... ``deconv_layers.N``,
``hm``/``wh``/``reg``), so an official checkpoint loads with ``load_state_dict``;
:func:`official_state_from_segzoo` gives a segzoo model's weights in that layout (the inverse of
``segzoo convert --from centernet-official``). tests/benchmarks/test_centernet_official.py checks
that the restatement and segzoo give the same boxes, scores and labels on mapped random weights.
Benchmark-only: nothing in ``segzoo/`` imports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import deform_conv2d

DOWN_RATIO = 4
WIDTHS = {"res": (256, 256, 256), "resdcn": (256, 128, 64)}


class DCN(nn.Module):
    """DCNv2's ``DCN(cin, cout, 3, stride 1, padding 1)``: modulated, one offset group."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.conv_offset_mask = nn.Conv2d(in_channels, 27, 3, padding=1)
        nn.init.zeros_(self.conv_offset_mask.weight)  # official init_offset: the sampling starts regular
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1, o2, m = torch.chunk(self.conv_offset_mask(x), 3, dim=1)
        return deform_conv2d(x, torch.cat((o1, o2), dim=1), self.weight, self.bias, padding=1, mask=m.sigmoid())


class OfficialResNetCenterNet(nn.Module):
    """The official ``PoseResNet`` of ``msra_resnet`` (``dcn=False``) or ``resnet_dcn`` (``dcn=True``).

    ``forward`` returns the raw maps ``{"hm", "wh", "reg"}`` (the official network wraps them in a list).
    """

    def __init__(self, depth: int = 18, num_classes: int = 80, dcn: bool = False, head_conv: int = 64) -> None:
        super().__init__()
        body = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(body, name))
        c = body.fc.in_features
        layers: list[nn.Module] = []
        for w in WIDTHS["resdcn" if dcn else "res"]:
            if dcn:
                layers += [DCN(c, w), nn.BatchNorm2d(w, momentum=0.1), nn.ReLU(inplace=True)]
                c = w
            layers += [nn.ConvTranspose2d(c, w, 4, stride=2, padding=1, output_padding=0, bias=False),
                       nn.BatchNorm2d(w, momentum=0.1), nn.ReLU(inplace=True)]
            c = w
        self.deconv_layers = nn.Sequential(*layers)
        for head, n in (("hm", num_classes), ("wh", 2), ("reg", 2)):
            setattr(self, head, nn.Sequential(nn.Conv2d(c, head_conv, 3, padding=1), nn.ReLU(inplace=True),
                                              nn.Conv2d(head_conv, n, 1)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.deconv_layers(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        return {"hm": self.hm(x), "wh": self.wh(x), "reg": self.reg(x)}


def _gather(feat: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """``N x C x H x W`` map, ``N x K`` flat cell indices -> ``N x K x C`` (official ``_transpose_and_gather_feat``)."""
    n, c = feat.shape[:2]
    flat = feat.permute(0, 2, 3, 1).reshape(n, -1, c)
    return flat.gather(1, ind.unsqueeze(2).expand(n, ind.shape[1], c))


def ctdet_decode(heat: torch.Tensor, wh: torch.Tensor, reg: torch.Tensor, k: int = 100) -> torch.Tensor:
    """The official ``ctdet_decode`` (class-agnostic ``wh``): ``N x K x 6`` (x1, y1, x2, y2, score, class).

    ``heat`` is the heatmap after the sigmoid; boxes are in output cells.
    """
    n, c, h, w = heat.shape
    heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
    class_scores, class_inds = heat.view(n, c, -1).topk(k)  # top K per class ...
    scores, pick = class_scores.view(n, -1).topk(k)  # ... then over all classes
    classes = pick // k
    inds = class_inds.view(n, -1).gather(1, pick)  # cell index within H x W
    ys = (inds // w).float()
    xs = (inds % w).float()
    offset = _gather(reg, inds)
    xs, ys = xs + offset[..., 0], ys + offset[..., 1]
    size = _gather(wh, inds)
    half_w, half_h = size[..., 0] / 2, size[..., 1] / 2
    boxes = torch.stack([xs - half_w, ys - half_h, xs + half_w, ys + half_h], dim=2)
    return torch.cat([boxes, scores.unsqueeze(2), classes.unsqueeze(2).float()], dim=2)


class OfficialCtdet(nn.Module):
    """What ``CtdetDetector.process`` computes on a normalised BGR batch: ``N x K x 6`` detections, boxes in
    input pixels (the official ``post_process`` on an input that needed no resizing)."""

    def __init__(self, depth: int = 18, num_classes: int = 80, dcn: bool = False, head_conv: int = 64,
                 k: int = 100) -> None:
        super().__init__()
        self.net = OfficialResNetCenterNet(depth, num_classes, dcn, head_conv)
        self.k = k

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(images)
        dets = ctdet_decode(out["hm"].sigmoid_(), out["wh"], out["reg"], self.k)
        return torch.cat([dets[..., :4] * DOWN_RATIO, dets[..., 4:]], dim=2)


def official_state_from_segzoo(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A segzoo ``centernet_res*`` / ``centernet_resdcn*`` state dict in the official layout.

    The inverse of the official converter's renaming, and of its reversal of ``conv1``'s input
    channels: the result takes BGR input, as the official network does.
    """
    heads = {"head.heatmap.": "hm.", "head.size.": "wh.", "head.offset.": "reg."}
    out = {}
    for key, value in state.items():
        if key.startswith("backbone.body."):
            new = key.removeprefix("backbone.body.")
            if new.startswith("fc."):
                continue
        elif key.startswith("neck.layers."):
            new = "deconv_layers." + key.removeprefix("neck.layers.")
        else:
            prefix = next((p for p in heads if key.startswith(p)), None)
            if prefix is None:
                raise KeyError(f"unexpected key {key!r}: not a segzoo ResNet CenterNet (res_* / resdcn_*)")
            new = heads[prefix] + key.removeprefix(prefix)
        out[new] = value
    out["conv1.weight"] = out["conv1.weight"].flip(1)  # segzoo RGB input -> official BGR input
    return out


def official_from_segzoo(model: nn.Module, k: int = 100) -> OfficialCtdet:
    """The restated official detector holding ``model``'s weights (eval mode)."""
    dcn = model.neck_name == "deconv_dcn"
    if model.neck_name not in ("deconv", "deconv_dcn"):
        raise ValueError(f"only the res_* and resdcn_* necks have an official restatement here, got "
                         f"{model.neck_name!r}")
    depth = int(model.backbone.name.removeprefix("resnet"))
    official = OfficialCtdet(depth, model.num_classes, dcn, model.head.heatmap[0].out_channels, k)
    official.net.load_state_dict(official_state_from_segzoo(model.state_dict()))
    return official.eval()


def official_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """RGB images in [0, 1] -> the official network's input: normalised with ``mean``/``std`` (RGB order,
    ``1 x 3 x 1 x 1``), channels in BGR order."""
    return ((images - mean) / std).flip(1)
