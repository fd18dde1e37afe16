"""segzoo's imbalance losses against segmentation_models_pytorch's, forward + backward, one process.

    OMP_NUM_THREADS=1 python -m benchmarks.speed.losses

Logits 4 x 19 x 128 x 256 (Cityscapes' classes at a quarter of its crop), 1/16 of the pixels
ignored. Both sides run alternately, each time is the best of the medians of 5 calls; the ratio
is segzoo / smp (below 1: segzoo is faster).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from segzoo.losses import lovasz_softmax, soft_bce_loss, tversky_loss


def _time(fn, logits, target) -> float:
    x = logits.clone().requires_grad_(True)
    times = []
    for _ in range(5):
        x.grad = None
        t0 = time.perf_counter()
        fn(x, target).backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(rounds: int = 4) -> None:
    import segmentation_models_pytorch.losses as smp_losses

    torch.set_num_threads(1)
    torch.manual_seed(0)
    logits = torch.randn(4, 19, 128, 256)
    targets = torch.randint(0, 19, (4, 128, 256))
    targets[:, :8] = 255
    onehot = F.one_hot(targets.clamp(max=18), 19).permute(0, 3, 1, 2).float()
    onehot[(targets == 255)[:, None].expand_as(onehot)] = 255  # smp ignores elementwise
    cases = {
        "lovasz": (lovasz_softmax, smp_losses.LovaszLoss("multiclass", ignore_index=255), targets),
        "lovasz per_image": (lambda x, y: lovasz_softmax(x, y, per_image=True),
                             smp_losses.LovaszLoss("multiclass", per_image=True, ignore_index=255), targets),
        "tversky": (tversky_loss, smp_losses.TverskyLoss("multiclass", smooth=1.0, ignore_index=255, alpha=0.3,
                                                         beta=0.7), targets),
        "bce": (soft_bce_loss, smp_losses.SoftBCEWithLogitsLoss(ignore_index=255), onehot),
    }
    print("| loss | segzoo ms | smp ms | ratio |\n|---|---|---|---|")
    for name, (ours, ref, ref_target) in cases.items():
        a, b = [], []
        for _ in range(rounds):
            a.append(_time(ours, logits, targets))
            b.append(_time(ref, logits, ref_target))
        print(f"| {name} | {min(a) * 1e3:.0f} | {min(b) * 1e3:.0f} | {min(a) / min(b):.2f} |")


if __name__ == "__main__":
    main()
