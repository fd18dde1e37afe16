import os

import pytest
import torch

# keep tests fast and deterministic on 2 CPU cores
# (one thread per pytest-xdist worker: the README's command runs two workers)
_default_threads = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
torch.set_num_threads(int(os.environ.get("SEGZOO_TEST_THREADS", _default_threads)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def build_small(name: str, **kwargs) -> torch.nn.Module:
    """The registered architecture, with resnet18 in place of a larger ResNet where it takes a backbone."""
    import inspect

    import segzoo
    from segzoo.registry import get_entry

    with torch.device("meta"):  # cheap probe: which backbone does the entrypoint use?
        probe = segzoo.build(name, **kwargs)
    params = inspect.signature(type(probe).__init__).parameters
    swap = {}
    if "backbone" in params and "backbone" not in kwargs and get_entry(name).task == "semantic":
        backbone = getattr(probe, "backbone_name", None) or _backbone_name(probe)
        if isinstance(backbone, str) and backbone.startswith("resnet") and backbone not in ("resnet18", "resnet34"):
            swap = {"backbone": "resnet18"}
    return segzoo.build(name, **swap, **kwargs).eval()


def _backbone_name(model):
    bb = getattr(model, "backbone", None)
    return getattr(bb, "name", None)


@pytest.fixture
def small_model():
    return build_small
