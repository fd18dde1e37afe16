"""Small blocks shared by several architectures."""

from segzoo.layers.aspp import ASPP, ASPPPooling  # noqa: F401
from segzoo.layers.conv import ConvNormAct, FCNHead
from segzoo.layers.dcn import ModulatedDeformConv2d  # noqa: F401
from segzoo.layers.ocr import OCRHead  # noqa: F401
from segzoo.layers.ppm import PyramidPooling  # noqa: F401

__all__ = ["ConvNormAct", "FCNHead"]
