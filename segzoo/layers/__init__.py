"""Small blocks shared by several architectures."""

from segzoo.layers.conv import ConvNormAct, FCNHead

__all__ = ["ConvNormAct", "FCNHead"]
