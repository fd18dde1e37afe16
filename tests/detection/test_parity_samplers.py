"""segzoo's RPN and RoI samplers against torchvision's ``BalancedPositiveNegativeSampler``.

torchvision picks, per image, ``min(#positives, int(batch * fraction))`` positives and
``min(#negatives, batch - that)`` negatives, each set uniformly at random among its
eligible elements (``randperm``). segzoo samples the whole batch at once; these tests check
that it picks the same counts, the same per-element frequencies and uniformly random subsets.

Statistics: over ``T`` draws, an element picked with probability ``p`` has a frequency with
standard deviation ``sqrt(p (1 - p) / T)``; each frequency must lie within ``Z = 5.5`` of
them from ``p`` (two-sided tail 4e-8 per element; with a few thousand elements the chance
that a correct sampler fails is below 2e-4, and the seeds are fixed, so the test is
deterministic). A sampler that favoured some elements by as little as ``6 sd`` (e.g. 0.08 in
frequency for p = 0.5 at T = 1200) would fail. Subset uniformity is a chi-square test over all
subsets of a small case (critical values from ``scipy.stats.chi2.ppf(1 - 1e-4, df)``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

import segzoo

T = 1200  # draws
Z = 5.5


def _labels(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Three images: more positives than the cap, fewer negatives than the fill, no positives;
    ignored (-1) elements in all; classes > 1 among the positives (RoI labels)."""
    counts = [(300, 2000, 150), (40, 100, 30), (0, 700, 20)]  # positives, negatives, ignored
    per_image = []
    for pos, neg, ign in counts:
        lab = torch.cat([torch.randint(1, 4, (pos,), generator=g), torch.zeros(neg), -torch.ones(ign)]).long()
        per_image.append(lab[torch.randperm(len(lab), generator=g)])  # positions mixed
    group = torch.cat([torch.full((len(lab),), i) for i, lab in enumerate(per_image)])
    return torch.cat(per_image), group, per_image


@pytest.fixture(scope="module")
def samplers():
    """(segzoo sampler, torchvision sampler) of the RPN and of the RoI heads, from the models."""
    with torch.device("meta"):
        ours = segzoo.build("maskrcnn_resnet50_fpn")
        tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    return {"rpn": (ours.rpn.sampler, tv.rpn.fg_bg_sampler),
            "roi": (ours.roi_heads.sampler, tv.roi_heads.fg_bg_sampler)}


@pytest.mark.parametrize("stage", ["rpn", "roi"])
def test_sampler_counts_and_frequencies_match_torchvision(samplers, stage):
    ours, tv = samplers[stage]
    assert (ours.batch_size_per_image, ours.positive_fraction) == (tv.batch_size_per_image, tv.positive_fraction)
    g = torch.Generator().manual_seed(0)
    labels, group, per_image = _labels(g)
    n = len(per_image)
    torch.manual_seed(1)
    draws = {"ours": ([], []), "tv": ([], [])}  # per draw: (L,) picked positives, negatives
    for _ in range(T):
        pos, neg = ours(labels, group, n)
        draws["ours"][0].append(pos)
        draws["ours"][1].append(neg)
        tpos, tneg = (torch.cat(x).bool() for x in tv(per_image))
        draws["tv"][0].append(tpos)
        draws["tv"][1].append(tneg)
    (ours_pos, ours_neg), (tv_pos, tv_neg) = ([torch.stack(d) for d in draws[k]] for k in ("ours", "tv"))  # (T, L)
    one_hot = torch.nn.functional.one_hot(group, n).float()  # (L, n)
    for a, b in ((ours_pos, tv_pos), (ours_neg, tv_neg)):  # the reference's counts in every draw
        assert torch.equal(a.float() @ one_hot, b.float() @ one_hot)
    assert not (ours_pos & ours_neg).any()
    ours_pos, ours_neg, tv_pos, tv_neg = (x.sum(0).float() for x in (ours_pos, ours_neg, tv_pos, tv_neg))
    for picked, ref, kind in ((ours_pos, tv_pos, labels > 0), (ours_neg, tv_neg, labels == 0)):
        for i in range(n):
            eligible = kind & (group == i)
            if not eligible.any():
                continue
            # torchvision's probability: its count over the eligible elements (uniform choice)
            p = float(ref[eligible].sum()) / T / int(eligible.sum())
            sd = math.sqrt(p * (1 - p) / T)
            freq, ref_freq = picked[eligible] / T, ref[eligible] / T
            assert (freq - p).abs().max() <= Z * sd + 1e-12, f"image {i}: a frequency is off {p:.3f}"
            assert (ref_freq - p).abs().max() <= Z * sd + 1e-12  # the bound holds for the reference
            assert (freq - ref_freq).abs().max() <= Z * math.sqrt(2) * sd + 1e-12
        assert picked[~kind].sum() == 0  # never an ineligible element


def test_sampler_subsets_are_uniform():
    # 6 positives capped at 3 (20 subsets) and 7 negatives filling 3 (35 subsets)
    from segzoo.detection.matcher import BalancedSampler

    labels = torch.tensor([1, 0, 0, 2, 1, -1, 0, 1, 0, 0, 1, 0, 1, 0])
    group = torch.zeros_like(labels)
    draws = 4000
    torch.manual_seed(2)
    pos_sets, neg_sets = {}, {}
    sampler = BalancedSampler(6, 0.5)
    for _ in range(draws):
        pos, neg = sampler(labels, group, 1)
        pos_sets[tuple(pos.tolist())] = pos_sets.get(tuple(pos.tolist()), 0) + 1
        neg_sets[tuple(neg.tolist())] = neg_sets.get(tuple(neg.tolist()), 0) + 1
    for sets, count, critical in ((pos_sets, 20, 50.80), (neg_sets, 35, 73.48)):
        assert len(sets) == count  # every subset occurs
        expected = draws / count
        chi2 = sum((c - expected) ** 2 / expected for c in sets.values())
        assert chi2 < critical, f"chi-square {chi2:.1f} over {count} subsets"
