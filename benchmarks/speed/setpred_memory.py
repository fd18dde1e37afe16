"""Peak memory and time of a universal model's merges (semantic, instance, panoptic) for 200 queries on a
1024 px image: the inference path after the logits, on random logits (what is measured is the merges).

    OMP_NUM_THREADS=1 python -m benchmarks.speed.setpred_memory [--queries 200] [--size 1000 1010]

``model.postprocess`` of ``mask2former_resnet18_small`` built with ``--classes`` (133, COCO panoptic, 53
of them stuff) and ``--queries``, on ``Q x (C + 1)`` class logits and ``Q x Hp/4 x Wp/4`` mask logits
(``Hp, Wp``: the size padded to 32). Printed: the peak of the bytes torch's tensors held at once
(a dispatch mode that adds each new storage and drops it when freed), the process's peak resident
memory above what it held before (``ru_maxrss``), the outputs' bytes and what one ``Q x H x W`` float
tensor takes.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import segzoo


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held at once by the storages aten ops made while it was on."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak, self.seen = 0, 0, set()

    def _drop(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.seen:
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._drop, key, storage.nbytes())
        return out


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--classes", type=int, default=133)
    p.add_argument("--stuff", type=int, default=53)
    p.add_argument("--topk", type=int, default=100, help="instances kept (the same on any commit measured)")
    p.add_argument("--size", type=int, nargs=2, default=(1000, 1010), metavar=("H", "W"))
    p.add_argument("--count", choices=["live", "rss"], default="rss",
                   help="live: count torch's bytes with a dispatch mode (slower); rss: the process's peak only")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = segzoo.build("mask2former_resnet18_small", num_classes=args.classes, num_stuff=args.stuff,
                         num_queries=args.queries, topk=args.topk).eval()
    h, w = args.size
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    cls = torch.randn(1, args.queries, args.classes + 1) * 3
    best = torch.randint(0, args.classes, (1, args.queries, 1))
    cls.scatter_add_(2, best, torch.full((1, args.queries, 1), 12.0))  # one sure class a query: segments
    yy, xx = torch.meshgrid(torch.arange(hp // 4.0), torch.arange(wp // 4.0), indexing="ij")
    centre = torch.rand(args.queries, 2, 1, 1) * torch.tensor([hp / 4, wp / 4]).view(1, 2, 1, 1)
    radius = (hp // 4) * (0.012 + 0.035 * torch.rand(args.queries, 1, 1))  # a third of the pixels covered
    dist = ((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2).sqrt()
    msk = (6 * (1 - dist / radius))[None]  # one blob a query: the panoptic merge finds segments
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mode = LiveBytes() if args.count == "live" else None
    t0 = time.perf_counter()
    with torch.no_grad():
        if mode is not None:
            with mode:
                out = model.postprocess(cls, msk, (hp, wp), [(h, w)])[0]
        else:
            out = model.postprocess(cls, msk, (hp, wp), [(h, w)])[0]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    outputs = sum(v.untyped_storage().nbytes() for v in out.values() if isinstance(v, torch.Tensor))
    print(json.dumps({
        "queries": args.queries, "topk": args.topk, "classes": args.classes, "image": f"{h} x {w} (padded {hp} x {wp})",
        "instances": len(out["labels"]), "segments": len(out["segments_info"]), "postprocess_s": round(seconds, 1),
        "peak_torch_bytes_mb": None if mode is None else _mb(mode.peak), "peak_rss_above_before_mb": _mb(peak - base),
        "outputs_mb": _mb(outputs), "one_QxHxW_float_mb": _mb(args.queries * h * w * 4),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
