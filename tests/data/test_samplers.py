"""Aspect-ratio grouped batches: torchvision's bins, one group per batch, repeatable, sharded for DDP;
image sizes read without decoding."""

import bisect

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Subset

from segzoo.data import MaskFolder
from segzoo.data.samplers import GroupedBatchSampler, aspect_ratio_groups, image_sizes


@pytest.mark.parametrize("k", [0, 1, 3])
def test_groups_use_torchvisions_bins(k):
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(10, 1000, size=(300, 2))]
    bins = (2 ** np.linspace(-1, 1, 2 * k + 1)).tolist() if k > 0 else [1.0]  # the reference's rule
    assert aspect_ratio_groups(sizes, k) == [bisect.bisect_right(bins, w / h) for h, w in sizes]
    assert aspect_ratio_groups([(100, 100), (100, 30), (30, 100)], 3) == [4, 0, 7]


def _batches(sampler):
    return [list(b) for b in sampler]


def test_batches_hold_one_group_and_repeat_under_a_seed():
    groups = [i % 3 for i in range(50)]
    sampler = GroupedBatchSampler(groups, batch_size=4, seed=1)
    first = _batches(sampler)
    assert len(first) == len(sampler) == 13  # ceil(50 / 4)
    assert all(len(b) == 4 and len({groups[i] for i in b}) == 1 for b in first)
    assert _batches(GroupedBatchSampler(groups, batch_size=4, seed=1)) == first
    sampler.set_epoch(1)
    assert _batches(sampler) != first
    assert len(_batches(GroupedBatchSampler(groups, batch_size=4, drop_last=True))) == 12
    ordered = _batches(GroupedBatchSampler([0] * 8, batch_size=4, shuffle=False))
    assert ordered == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_shards_are_disjoint_equal_in_length_and_cover_the_data():
    groups = [0] * 48
    shards = [_batches(GroupedBatchSampler(groups, batch_size=4, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    used = [{i for b in s for i in b} for s in shards]
    assert not (used[0] & used[1]) and not (used[1] & used[2]) and not (used[0] & used[2])
    assert set().union(*used) == set(range(48))
    # uneven groups: every process still yields the same number of single-group batches
    groups = [0] * 13 + [1] * 7 + [2] * 3
    lengths = set()
    for r in range(2):
        s = GroupedBatchSampler(groups, batch_size=4, seed=0, num_replicas=2, rank=r)
        batches = _batches(s)
        lengths.add(len(batches))
        assert all(len({groups[i] for i in b}) == 1 and len(b) == 4 for b in batches)
    assert lengths == {len(GroupedBatchSampler(groups, batch_size=4, num_replicas=2, rank=0))}
    with pytest.raises(ValueError, match="rank"):
        GroupedBatchSampler(groups, batch_size=4, num_replicas=2, rank=2)


def test_works_as_a_dataloader_batch_sampler():
    data = [torch.tensor(i) for i in range(10)]
    sampler = GroupedBatchSampler([i % 2 for i in range(10)], batch_size=2, seed=0)
    for batch in DataLoader(data, batch_sampler=sampler):
        assert batch.shape == (2,) and len({int(v) % 2 for v in batch}) == 1


def test_image_sizes_come_from_records_or_headers_without_decoding(tmp_path, monkeypatch):
    (tmp_path / "im").mkdir()
    (tmp_path / "m").mkdir()
    for name, (h, w) in {"a": (20, 30), "b": (40, 10)}.items():
        Image.new("RGB", (w, h)).save(tmp_path / "im" / f"{name}.png")
        Image.new("L", (w, h)).save(tmp_path / "m" / f"{name}.png")
    folder = MaskFolder(tmp_path / "im", tmp_path / "m", num_classes=2)

    def no_decoding(self, *a, **k):
        raise AssertionError("image_sizes decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert image_sizes(folder) == [(20, 30), (40, 10)]
    assert image_sizes(Subset(folder, [1])) == [(40, 10)]
    assert aspect_ratio_groups(image_sizes(folder), 0) == [1, 0]

    class Coco:
        images = [{"id": 1, "height": 5, "width": 7}]

        def __len__(self):
            return 1

    assert image_sizes(Coco()) == [(5, 7)]
    with pytest.raises(TypeError, match="image_hw"):
        image_sizes([torch.zeros(3, 4, 4)])


def test_image_sizes_of_a_benchmark_reader(tmp_path):
    from segzoo.data.formats.cityscapes import Cityscapes
    from tests.data_layouts import write_cityscapes

    data = Cityscapes(write_cityscapes(tmp_path), split="train")
    sizes = image_sizes(data)
    assert len(sizes) == len(data) and sizes[0] == tuple(data[0][0].shape[-2:])


def test_seeded_items_repeat_and_touch_only_the_cpu_generator(monkeypatch):
    from segzoo.data.samplers import SeededDataset

    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3)

    data = SeededDataset(Noise(), seed=7)
    first = [data[(i, 1)] for i in range(4)]
    state = torch.get_rng_state()
    # torch.manual_seed also seeds every accelerator (left changed after fork_rng(devices=[])), and on a
    # CUDA build costs about 1 ms per item: the wrapper seeds the CPU generator alone
    monkeypatch.setattr(torch, "manual_seed", lambda *a: pytest.fail("torch.manual_seed called per item"))
    again = [data[(i, 1)] for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(data[(0, 1)], data[(0, 2)])  # another epoch, another draw
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator untouched
