"""``segzoo.detection.centernet.top_k``: the first k of a stable descending sort, without the sort."""

import pytest
import torch

from segzoo.detection import centernet
from segzoo.detection.centernet import top_k


def _stable(x, k):
    values, index = x.sort(dim=1, descending=True, stable=True)
    return values[:, :k], index[:, :k]


def _cases():
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        n = 1 + trial % 2
        row = 1 + trial % 7
        rows = 1 + (trial * 5) % 11
        x = torch.rand(n, rows * row, generator=g).round(decimals=trial % 3)  # 0 decimals: nearly all ties
        if trial % 3 == 0:
            x[torch.rand(x.shape, generator=g) < 0.15] = float("nan")  # NaN ranks above all, as in topk
        if trial % 4 == 0:
            x = -x  # negative values and -0.0 beside 0.0 (equal, so tied)
        yield x, row


def test_top_k_is_the_head_of_a_stable_descending_sort():
    for x, row in _cases():
        for k in range(x.shape[1] + 1):
            values, index = top_k(x, k, row)
            ref_values, ref_index = _stable(x, k)
            assert torch.equal(index, ref_index), (x, row, k)
            assert torch.equal(values.nan_to_num(9.0), ref_values.nan_to_num(9.0))


def test_top_k_reads_a_heatmap_sized_row():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 80 * 64 * 64, generator=g).round(decimals=3)  # many equal scores across rows
    values, index = top_k(x, 100, row=64)
    ref_values, ref_index = _stable(x, 100)
    assert torch.equal(index, ref_index) and torch.equal(values, ref_values)


def test_top_k_orders_a_large_k_by_a_stable_sort_and_an_empty_map_gives_nothing():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 40 * 50, generator=g).round(decimals=2)
    for k in (centernet._PAIRWISE_MAX_K, centernet._PAIRWISE_MAX_K + 1, 1500):  # both ways of ordering the k
        values, index = top_k(x, k, row=50)
        ref_values, ref_index = _stable(x, k)
        assert torch.equal(index, ref_index) and torch.equal(values, ref_values)
    values, index = top_k(torch.zeros(3, 0), 0, row=0)  # a map of width 0 (decode's row is its width)
    assert values.shape == index.shape == (3, 0) and index.dtype == torch.long
    values, index = top_k(torch.zeros(0, 12), 5, row=4)  # an empty batch
    assert values.shape == index.shape == (0, 5)


def test_top_k_refuses_what_it_cannot_rank():
    x = torch.rand(1, 12)
    with pytest.raises(ValueError, match="k <= L"):
        top_k(x, 13, 4)
    with pytest.raises(ValueError, match="multiple of row"):
        top_k(x, 3, 5)
