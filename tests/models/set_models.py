"""Checks shared by the set-prediction models' tests (Mask2Former, EoMT)."""

from __future__ import annotations

import pytest
import torch


def check_mixed_sizes_and_backward(m: torch.nn.Module) -> None:
    """Two images of different sizes train (every parameter gets a gradient, finite losses), predict at
    their own sizes, and targets in the wrong order are refused by their image size."""
    images = [torch.rand(3, 40, 56), torch.rand(3, 64, 33)]
    targets = [{"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 40, 56) > 0.5},
               {"labels": torch.tensor([1]), "masks": torch.rand(1, 64, 33) > 0.5}]
    losses = m(images, targets)
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    no_grad = [k for k, p in m.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    m.eval()
    with torch.no_grad():
        out = m(images)
    assert out[0]["sem_seg"].shape == (3, 40, 56) and out[1]["segments"].shape == (64, 33)
    with pytest.raises(ValueError, match="image size"):
        m(images, [targets[1], targets[0]])
