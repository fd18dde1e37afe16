"""reduce() of every accumulator under a real 2-process gloo group equals one process seeing all data."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segzoo.metrics import CocoEvaluator, DetectionPRCurve, PRCurve, SegmentationMetric


def _data(rank):
    g = torch.Generator().manual_seed(10 + rank)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    box = torch.tensor([[rank * 10.0, 0, rank * 10.0 + 8, 8]])
    det = ({"boxes": box + rank, "scores": torch.tensor([0.9]), "labels": torch.tensor([rank])},
           {"boxes": box, "labels": torch.tensor([rank]), "image_id": rank})
    return logits, target, det


def _accumulate(ranks):
    seg, pr, coco, det = SegmentationMetric(4), PRCurve(4, num_bins=11), CocoEvaluator(2), DetectionPRCurve(2)
    for r in ranks:
        logits, target, (pred, tgt) = _data(r)
        seg.update(logits, target)
        pr.update(logits.softmax(1), target)
        coco.update([pred], [tgt])
        det.update([pred], [tgt])
    return seg, pr, coco, det


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        seg, pr, coco, det = _accumulate([rank])
        for m in (seg, pr, coco, det):
            m.reduce()
        if rank == 0:
            torch.save({"confusion": seg.confusion, "pos": pr.pos, "coco": coco.compute()["bbox_AP"],
                        "det": det.compute()["per_class"]}, out_file)
    finally:
        dist.destroy_process_group()


def test_reduce_over_two_processes(tmp_path):
    # fork: the children reuse the imported modules instead of importing torch and segzoo again
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=2, join=True,
                       start_method="fork")
    got = torch.load(tmp_path / "out.pt")
    seg, pr, coco, det = _accumulate([0, 1])
    assert torch.equal(got["confusion"], seg.confusion)
    assert [c["ap"] for c in got["det"]] == [c["ap"] for c in det.compute()["per_class"]]
    assert [c["num_positives"] for c in got["det"]] == [1, 1]
    assert torch.equal(got["pos"], pr.pos)
    assert got["coco"] == coco.compute()["bbox_AP"]
    assert int(got["confusion"].sum()) == 2 * 2 * 8 * 8  # both ranks counted
