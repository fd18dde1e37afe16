"""The registry reaches published weights through the hub by a direct import, with no hook that
``import segzoo`` installs: ``segzoo.registry.build(name, weights=TAG)`` works in an interpreter where
``segzoo/__init__.py`` never ran (the families register their weights rows and converters themselves)."""

import subprocess
import sys
from pathlib import Path

import torch

from tests.hub.test_weights import DATA, random_state

ROOT = Path(__file__).resolve().parents[2]
HRNET = "hrnet_w18_small_v1_cityscapes_cls19_1024x2048_trainset.pth"  # the manual source's file name

# an empty `segzoo` package object stands in for segzoo/__init__.py, so nothing it does (importing
# every module, installing anything) happens; only the registry and the model families are imported
BARE = f"""
import sys, types
package = types.ModuleType("segzoo")
package.__path__ = [{str(ROOT / "segzoo")!r}]
sys.modules["segzoo"] = package
import segzoo.models, segzoo.registry
"""


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BARE + code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def test_registry_alone_builds_with_a_published_tag(tmp_path):
    home = tmp_path / "segzoo"
    (home / "downloads").mkdir(parents=True)
    # a random official HRNetV2-W18-Small-v1 Cityscapes file where manual downloads are picked up
    torch.save(random_state(DATA / "hrnet_official_w18_small_v1.txt", prefix="model."), home / "downloads" / HRNET)
    env = {"PATH": "/usr/bin:/bin", "SEGZOO_HOME": str(home), "SEGZOO_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = _run("""
assert "segzoo.convert" not in sys.modules and "segzoo.cli" not in sys.modules
model = segzoo.registry.build("hrnet_w18_small", weights="cityscapes")  # fetched (by hand), converted, cached
print(model.spec.name, model.num_classes, model.classes[0], model.classes[-1])
""", env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["hrnet_w18_small", "19", "road", "bicycle"]
    assert (home / "checkpoints" / "hrnet_w18_small.cityscapes.safetensors").is_file()
