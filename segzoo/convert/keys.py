"""Small helpers shared by the converters: reading what a source state dict holds."""

from __future__ import annotations

# (bottleneck blocks?, blocks in layer3) -> ResNet depth
_RESNET_DEPTH = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101, (True, 36): 152}


def resnet_depth(state: dict, prefix: str = "") -> int | None:
    """Depth of a torchvision-layout ResNet body (``{prefix}layer1...``) from its block counts,
    or None when the keys are not those of a known ResNet."""
    layer3 = [k for k in state if k.startswith(f"{prefix}layer3.")]
    if not layer3:
        return None
    blocks = 1 + max(int(k[len(prefix):].split(".")[1]) for k in layer3)
    return _RESNET_DEPTH.get((f"{prefix}layer1.0.conv3.weight" in state, blocks))


def strip_module(state: dict) -> dict:
    """Remove the ``module.`` prefix that DataParallel/DDP checkpoints carry."""
    return {k.removeprefix("module."): v for k, v in state.items()}


__all__ = ["resnet_depth", "strip_module"]
