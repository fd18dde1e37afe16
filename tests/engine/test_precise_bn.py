"""train.precise_bn: BatchNorm statistics recomputed over training batches before evaluation and the last save."""

import json
import random

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from segzoo.checkpoint import read_safetensors
from segzoo.engine.build import build_trainer
from segzoo.engine.precise_bn import training_batch_norms, update_bn_stats
from segzoo.models.base import SegmentationModel
from segzoo.registry import ModelSpec
from tests.engine.test_trainer import TinySeg, cfg, shapes_sets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_sets(tmp_path_factory.mktemp("shapes"))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = FrozenBatchNorm2d(4)
        self.kept = nn.BatchNorm2d(4)  # held in eval mode while the model trains
        self.drop = nn.Dropout(0.5)

    def train(self, mode=True):
        super().train(mode)
        self.kept.eval()
        return self

    def forward(self, x):
        return self.drop(self.kept(self.frozen(self.bn(self.conv(x)))))


def test_statistics_are_the_batch_averages_and_everything_else_is_restored():
    torch.manual_seed(0)
    model = Block()
    model.bn.momentum = 0.3
    model.bn.num_batches_tracked.fill_(7)
    batches = [torch.randn(4, 3, 8, 8) * 2 + 1 for _ in range(3)]
    frozen, kept = dict(model.frozen.named_buffers()), {k: v.clone() for k, v in model.kept.state_dict().items()}
    frozen = {k: v.clone() for k, v in frozen.items()}
    model.eval()
    random.seed(5)
    torch.manual_seed(5)
    expected_rng = (torch.rand(3).tolist(), random.random())
    random.seed(5)
    torch.manual_seed(5)
    used = update_bn_stats(model, iter(batches), 2, lambda m, x: m(x))  # two of the three batches
    assert used == 2
    assert (torch.rand(3).tolist(), random.random()) == expected_rng  # the random stream as it was
    with torch.no_grad():
        y = [model.conv(x) for x in batches[:2]]
    mean = torch.stack([t.mean((0, 2, 3)) for t in y]).mean(0)
    var = torch.stack([t.transpose(0, 1).flatten(1).var(1, unbiased=True) for t in y]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert model.bn.momentum == 0.3 and int(model.bn.num_batches_tracked) == 7 and not model.training
    for k, v in model.frozen.named_buffers():
        assert torch.equal(v, frozen[k]), k
    for k, v in model.kept.state_dict().items():
        assert torch.equal(v, kept[k]), k
    assert training_batch_norms(model) == [model.bn]


def test_no_batchnorm_to_update_runs_nothing():
    calls = []
    model = nn.Sequential(nn.Conv2d(3, 3, 1), FrozenBatchNorm2d(3))
    assert update_bn_stats(model, iter([torch.zeros(1, 3, 2, 2)]), 1, lambda m, x: calls.append(x)) == 0
    assert calls == []
    with pytest.raises(ValueError, match="at least one batch"):
        update_bn_stats(model, iter([]), 0, lambda m, x: m(x))


class SmallInitSeg(SegmentationModel):
    """A fresh head whose conv outputs a variance far below BatchNorm's initial running variance of 1 (as a
    DeepLabV3+ decoder on an ImageNet body): after a short run, eval mode shrinks its output."""

    def __init__(self, num_classes=4):
        super().__init__(num_classes)
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        nn.init.normal_(self.conv.weight, std=0.01)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, num_classes, 1)
        self.spec = ModelSpec("small_init_seg", "semantic", num_classes)

    def forward_logits(self, x, with_aux=False):
        return self.head(torch.relu(self.bn(self.conv(x)))), None


def _eval_over_train(model, images):
    """How much smaller eval mode's normalised BatchNorm output is than training mode's, mean over channels."""
    with torch.no_grad():
        feats = model.conv(model.normalize(images))
    true_var = feats.transpose(0, 1).flatten(1).var(1)
    return float((true_var / (model.bn.running_var + model.bn.eps)).sqrt().mean())


@pytest.mark.parametrize("precise, close", [(0, False), (3, True)])
def test_eval_mode_matches_training_after_a_short_run(data, tmp_path, precise, close):
    torch.manual_seed(0)
    model = SmallInitSeg()
    trainer = build_trainer(model, *data, cfg(epochs=1, lr=0.001, precise_bn=precise), tmp_path)
    trainer.fit()
    images = torch.stack([data[0][i][0] for i in range(8)])
    ratio = _eval_over_train(model, images)
    # 4 steps at momentum 0.1 leave the running variance near 0.66 against a true one near 0.005: ratio 0.09
    assert (abs(ratio - 1) < 0.15) is close, ratio
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["batches"] for r in records if r["type"] == "precise_bn"] == ([3] if precise else [])
    saved = read_safetensors(tmp_path / "model.safetensors")[0]
    assert torch.equal(saved["bn.running_var"], model.bn.running_var)  # what is saved is what was evaluated


def test_training_stream_unchanged_and_resume_exact(data, tmp_path):
    """Only the BatchNorm statistics differ from a run without precise BN (dropout and data order as they were),
    and a run cut in its second epoch and resumed ends with the uninterrupted run's weights, bit for bit."""

    def run(out, precise, crash_at=None, resume=False):
        torch.manual_seed(0)
        model = TinySeg(dropout=0.2)

        def on_step(t):
            if t.step == crash_at:
                raise KeyboardInterrupt("simulated crash")

        build_trainer(model, *data, cfg(checkpoint_every=3, epochs=2, precise_bn=precise), out,
                      on_step=on_step).fit(resume=resume)
        return read_safetensors(out / "model.safetensors")[0]

    plain, full = run(tmp_path / "plain", 0), run(tmp_path / "full", 5)
    stats = ("backbone.1.running_mean", "backbone.1.running_var")
    for k in plain:
        assert torch.equal(plain[k], full[k]) is (k not in stats), k
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", 5, crash_at=7)  # after the epoch-1 precise BN and evaluation; last checkpoint step 6
    cut = run(tmp_path / "cut", 5, resume=True)
    for k in full:
        assert torch.equal(full[k], cut[k]), k
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "cut"))
    assert a["final"]["miou"] == b["final"]["miou"]


def test_frozen_backbone_batchnorm_is_left_alone(data, tmp_path):
    torch.manual_seed(0)
    model = TinySeg()
    build_trainer(model, *data, cfg(epochs=1, precise_bn=2, freeze_backbone_bn=True), tmp_path).fit()
    bn = model.backbone[1]
    assert type(bn).__name__ == "FrozenBatchNorm2d"
    assert torch.equal(bn.running_var, torch.ones(8)) and torch.equal(bn.running_mean, torch.zeros(8))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["batches"] for r in records if r["type"] == "precise_bn"] == [0]


def test_ema_weights_get_their_own_statistics(data, tmp_path):
    torch.manual_seed(0)
    model = TinySeg()
    trainer = build_trainer(model, *data, cfg(epochs=1, precise_bn=2, ema=True, ema_decay=0.9), tmp_path)
    trainer.fit()
    ema = trainer.ema.module
    assert ema.backbone[1].momentum == 0.1 and not ema.training
    expected = ema.backbone[1].running_var.clone()
    update_bn_stats(ema, trainer._precise_bn_batches(0), 2, trainer._precise_bn_forward)  # the same two batches
    torch.testing.assert_close(ema.backbone[1].running_var, expected)
    assert not torch.equal(ema.backbone[1].running_var, model.backbone[1].running_var)


def _ddp_worker(rank, world, port, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = Block()
        batches = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(10 * rank + i)) * (rank + 1)
                   for i in range(2)]
        update_bn_stats(model, iter(batches), 2, lambda m, x: m(x))
        torch.save({"bn": {k: v.clone() for k, v in model.bn.state_dict().items()}, "batches": batches},
                   out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: about 30 s on the shared cores, most of it importing
def test_processes_average_their_statistics(tmp_path):
    """Under DDP every process ends with the mean of the processes' statistics, so the ranks' buffers agree."""
    import torch.multiprocessing as mp

    from tests.engine.test_trainer_ddp import _free_port

    mp.spawn(_ddp_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    own = []
    for got in saved:  # each rank's statistics alone, from the same weights in one process
        torch.manual_seed(0)
        model = Block()
        update_bn_stats(model, iter(got["batches"]), 2, lambda m, x: m(x))
        own.append((model.bn.running_mean, model.bn.running_var))
    for got in saved:
        torch.testing.assert_close(got["bn"]["running_mean"], (own[0][0] + own[1][0]) / 2)
        torch.testing.assert_close(got["bn"]["running_var"], (own[0][1] + own[1][1]) / 2)
    assert not torch.allclose(own[0][1], own[1][1])
