"""``data.aspect_ratio_groups``: the trainer's batches hold images of one aspect-ratio group, the
same batches on resume, and the option is refused where it means nothing."""

import pytest
import torch

import segzoo
from segzoo.data.samplers import GroupedShardBatches, ShardSampler
from segzoo.engine import build_trainer


class Boxes(torch.utils.data.Dataset):
    """Detection images, landscape (32 x 48) at even indices and portrait (48 x 32) at odd ones."""

    def __init__(self, n=12):
        self.n = n

    def __len__(self):
        return self.n

    def image_hw(self, i):
        return (32, 48) if i % 2 == 0 else (48, 32)

    def __getitem__(self, i):
        h, w = self.image_hw(i)
        g = torch.Generator().manual_seed(i)
        target = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 24.0]]), "labels": torch.tensor([i % 2])}
        return torch.rand(3, h, w, generator=g), target


def config(**data):
    return {"data": {"batch_size": 2, "num_workers": 0, **data}, "train": {"max_steps": 2, "lr": 0.001},
            "eval": {"every": 0}}


def orientations(batches):
    return [{tuple(im.shape[-2:]) for im in images} for images, _ in batches]


def test_batches_hold_one_aspect_ratio_group(tmp_path):
    model = segzoo.build("fasterrcnn_resnet18_fpn", num_classes=2)
    trainer = build_trainer(model, Boxes(), None, config(aspect_ratio_groups=0), tmp_path)
    groups = trainer.loader.group_ids
    assert groups[0::2] == [groups[0]] * 6 and groups[0] != groups[1]
    batches = list(trainer.loader.epoch(3))
    assert len(batches) == 6 and all(len(o) == 1 for o in orientations(batches))
    # without the option the shuffled batches mix portrait and landscape images
    plain = build_trainer(model, Boxes(), None, config(), tmp_path / "plain")
    assert any(len(o) == 2 for o in orientations(plain.loader.epoch(3)))
    trainer.fit()  # trains on grouped batches
    assert (tmp_path / "model.safetensors").is_file()


def test_resume_skips_the_batches_already_trained():
    groups = [i % 3 for i in range(20)]
    shard = ShardSampler(20, shuffle=True, seed=5, num_samples_per_rank=16)
    shard.set_epoch(2)
    full = list(GroupedShardBatches(shard, groups, 4))
    assert len(full) == 4 and all(len({groups[i] for i, _ in b}) == 1 for b in full)
    assert all(epoch == 2 for b in full for _, epoch in b)
    shard.set_epoch(2, skip=8)
    rest = GroupedShardBatches(shard, groups, 4)
    assert list(rest) == full[2:] and len(rest) == 2


def test_refused_for_semantic_training_and_for_wrong_group_counts(tmp_path):
    model = segzoo.build("unet", num_classes=2, channels=[4, 8, 16, 32, 64])
    data = [(torch.rand(3, 32, 32), torch.zeros(32, 32, dtype=torch.long)) for _ in range(4)]
    with pytest.raises(ValueError, match="semantic training crops every image to one size"):
        build_trainer(model, data, None, config(aspect_ratio_groups=3), tmp_path)
    with pytest.raises(ValueError, match="3 group ids for a dataset of 4"):
        GroupedShardBatches(ShardSampler(4), [0, 1, 0], 2)


def test_shard_length_is_counted_without_drawing_the_permutation(monkeypatch):
    shards = [ShardSampler(size, rank, ws, shuffle, seed=1, num_samples_per_rank=n)
              for size in (0, 1, 7, 20) for ws in (1, 2, 3) for rank in range(ws) for shuffle in (True, False)
              for n in (None, 0, 2, 7, 30)]
    expected = [len(s.indices()) for s in shards]
    import segzoo.engine.distributed as dist

    monkeypatch.setattr(dist.torch, "randperm", lambda *a, **k: pytest.fail("len() drew a permutation"))
    assert [s.count() for s in shards] == expected
    for s in shards:
        s.set_epoch(3, skip=2)
        assert len(s) == max(s.count() - 2, 0)
        assert len(GroupedShardBatches(s, [i % 2 for i in range(s.size)], 2)) == max(s.count() // 2 - 1, 0)
