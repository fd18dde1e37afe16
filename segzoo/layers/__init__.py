"""Small blocks shared by several architectures."""

from segzoo.layers.aspp import ASPP, ASPPPooling
from segzoo.layers.conv import ConvNormAct, FCNHead, SeparableConvNormAct
from segzoo.layers.dcn import ModulatedDeformConv2d
from segzoo.layers.multiscale import resize_concat
from segzoo.layers.ocr import OCRHead
from segzoo.layers.ppm import PyramidPooling
from segzoo.layers.tracing import is_tracing

__all__ = ["ASPP", "ASPPPooling", "ConvNormAct", "FCNHead", "ModulatedDeformConv2d", "OCRHead", "PyramidPooling",
           "SeparableConvNormAct", "is_tracing", "resize_concat"]
