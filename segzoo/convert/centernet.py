"""Official CenterNet (xingyizhou/CenterNet) checkpoints -> segzoo CenterNet models.

Supported ``--arch`` values of the official code and their segzoo names:
``res_18/50/101`` -> ``centernet_resnet18/50/101``; ``resdcn_18/101`` ->
``centernet_resdcn18/101``; ``dla_34`` -> ``centernet_dla34``; ``dlav0_34`` ->
``centernet_dla34_nodcn``. Other ResNet depths (``res_34``, ``resdcn_50``...) convert
into the entry of the same family with ``backbone="resnetNN"``.

Key mapping (after removing a ``module.`` prefix):

* ResNet body ``conv1``, ``bn1``, ``layerN.*`` -> ``backbone.body.*`` (timm's ResNet names
  are torchvision's, which the official code uses);
* ``base.*`` (DLA-34) -> ``backbone.body.*``: timm's ``dla34`` has the official layout
  except that it leaves out two unused layers, which are dropped here with the ImageNet
  classifier: ``base.fc.*``, ``base.level3.project.*`` and ``base.level4.project.*`` (the
  official ``Tree`` builds a ``project`` in its two-level trees but never uses it);
* ``deconv_layers.N.*`` -> ``neck.layers.N.*`` (DCN keys ``weight``, ``bias``,
  ``conv_offset_mask.*`` are kept);
* ``dla_up.*`` and ``ida_up.*`` -> ``neck.dla_up.*`` and ``neck.ida_up.*``, with a
  DeformConv's ``actf.0`` (its BatchNorm) renamed ``bn``;
* heads ``hm``, ``wh``, ``reg`` -> ``head.heatmap``, ``head.size``, ``head.offset``.

Input convention: the official pipeline feeds **BGR** images as ``(img / 255 - mean) /
std`` with ``mean``/``std`` listed per BGR channel (COCO: its own statistics; Pascal:
ImageNet's numbers, applied to B, G, R in that order). segzoo models take RGB in [0, 1],
so the converter reverses the input channels of the first convolution and gives the
model the official ``mean``/``std`` reversed into RGB order (recorded in ``model.spec``).
The converted model on an RGB image gives the official network's outputs on its BGR
input.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from segzoo.checkpoint import load_weights
from segzoo.convert.keys import resnet_depth
from segzoo.models.centernet import OFFICIAL_BGR, CenterNet
from segzoo.registry import build, entry_class

# official family -> segzoo CenterNet neck (a key of segzoo.models.centernet_necks.NECKS)
FAMILY_NECK = {"res": "deconv", "resdcn": "deconv_dcn", "dla": "dla_up", "dlav0": "dlav0"}
# a registered model of each family, for messages
_SUGGEST = {"res": "centernet_resnet18", "resdcn": "centernet_resdcn18", "dla": "centernet_dla34",
            "dlav0": "centernet_dla34_nodcn"}
_UNUSED = re.compile(r"^base\.(fc\.|level[34]\.project\.)")  # DLA-34: unused in two-level trees
_HEADS = {"hm.": "head.heatmap.", "wh.": "head.size.", "reg.": "head.offset."}


def official_arch(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """The official family (``res``, ``resdcn``, ``dla``, ``dlav0``) and timm backbone."""
    if "hm.2.weight" not in state:
        hint = " (hourglass checkpoints are not supported)" if any(k.startswith("pre.") for k in state) else ""
        raise KeyError("no hm.2.weight: this is not an official CenterNet ctdet state dict with "
                       f"head_conv > 0{hint}")
    if "deconv_layers.0.conv_offset_mask.weight" in state:
        family = "resdcn"
    elif "deconv_layers.0.weight" in state:
        family = "res"
    elif "dla_up.ida_0.proj_1.conv.weight" in state:
        family = "dla"
    elif "dla_up.ida_0.proj_1.0.weight" in state:
        family = "dlav0"
    else:
        raise KeyError("unrecognised official CenterNet architecture: expected deconv_layers.* "
                       "(res_*, resdcn_*) or dla_up.* (dla_34, dlav0_34) keys")
    if family in ("dla", "dlav0"):
        if state["base.level5.root.conv.weight"].shape[0] != 512:
            raise ValueError("only DLA-34 bodies are supported (level5 with 512 channels)")
        return family, "dla34"
    depth = resnet_depth(state)
    if depth is None:
        raise ValueError("unrecognised ResNet body (its layer3 block count is not that of ResNet-18/34/50/101/152)")
    return family, f"resnet{depth}"


def _map_key(k: str) -> str | None:
    if _UNUSED.match(k):
        return None
    if k.startswith("base."):
        return "backbone.body." + k.removeprefix("base.")
    if k.startswith(("conv1.", "bn1.", "layer")):
        return "backbone.body." + k
    if k.startswith("deconv_layers."):
        return "neck.layers." + k.removeprefix("deconv_layers.")
    if k.startswith(("dla_up.", "ida_up.")):
        return "neck." + k.replace(".actf.0.", ".bn.")
    for src, dst in _HEADS.items():
        if k.startswith(src):
            return dst + k.removeprefix(src)
    if k.startswith("fc."):  # an ImageNet classifier left in a ResNet checkpoint
        return None
    raise KeyError(f"unexpected key {k!r} in an official CenterNet state dict")


def from_centernet_official(
    state_dict: dict, name: str, convention: str | None = None, **build_kwargs: Any
) -> nn.Module:
    """Build segzoo CenterNet ``name`` holding an official CenterNet checkpoint's weights.

    Args:
        state_dict: the official checkpoint (``{"epoch", "state_dict", ...}``) or its
            ``state_dict``, with or without a ``module.`` prefix.
        name: the segzoo model, e.g. ``"centernet_dla34"`` for ``--arch dla_34``.
        convention: ``"coco"`` or ``"pascal"``: which official mean/std the weights were
            trained with; by default Pascal for 20 classes and COCO otherwise.
        **build_kwargs: extra builder arguments; ``num_classes``, ``head_conv``, the neck
            widths, ``mean`` and ``std`` are read from the checkpoint and the convention.

    Returns:
        The model in eval mode, taking RGB [0, 1] images, with ``model.spec`` set.
    """
    if not issubclass(entry_class(name), CenterNet):  # a clear KeyError for unknown names
        raise ValueError(f"{name!r} is not a CenterNet model; choose one of the centernet_* models "
                         "(segzoo.list_models('centernet_*'))")
    if isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    family, backbone = official_arch(state)
    with torch.device("meta"):  # what `name` builds by default: neck, backbone, widths (no memory)
        ref = build(name, **build_kwargs)
    if ref.neck_name != FAMILY_NECK[family]:
        raise ValueError(f"the checkpoint is an official {family}_* model (neck {FAMILY_NECK[family]!r}) but "
                         f"{name!r} has neck {ref.neck_name!r}; convert it with name {_SUGGEST[family]!r} "
                         "(or its deeper variants)")
    num_classes = int(state["hm.2.weight"].shape[0])
    if convention is None:
        convention = "pascal" if num_classes == 20 else "coco"
    if convention not in OFFICIAL_BGR:
        raise ValueError(f"convention must be 'coco' or 'pascal', got {convention!r}")
    mean_bgr, std_bgr = OFFICIAL_BGR[convention]
    kwargs: dict[str, Any] = {"mean": list(mean_bgr[::-1]), "std": list(std_bgr[::-1])}
    if backbone != ref.backbone.name:
        kwargs["backbone"] = backbone
    head_conv = int(state["hm.0.weight"].shape[0])
    if head_conv != ref.head.heatmap[0].out_channels:
        kwargs["head_conv"] = head_conv
    if family in ("res", "resdcn"):
        step = 3 if family == "res" else 6
        widths = tuple(int(state[f"deconv_layers.{step * i}.weight"].shape[1 if family == "res" else 0])
                       for i in range(3))
        if widths != ref.neck.widths:
            kwargs["neck_channels"] = list(widths)
    kwargs.update(build_kwargs)
    model = build(name, num_classes=num_classes, **kwargs)

    mapped = {}
    for k, v in state.items():
        new = _map_key(k)
        if new is not None:
            mapped[new] = v
    first = "backbone.body.conv1.weight" if family.startswith("res") else "backbone.body.base_layer.0.weight"
    mapped[first] = mapped[first].flip(1)  # official BGR input -> segzoo RGB input
    for k, v in model.state_dict().items():  # checkpoints from before PyTorch 0.4.1 lack these
        if k.endswith("num_batches_tracked") and k not in mapped:
            mapped[k] = torch.zeros_like(v)
    load_weights(model, mapped)
    return model.eval()
