"""python -m benchmarks.speed.dcn_paths: both CPU paths of the DCN layer, op and training step."""

import benchmarks.speed.dcn_paths as dcn_paths
import segzoo.layers.dcn as dcn


def test_op_rows_time_both_paths_and_the_conv(monkeypatch):
    monkeypatch.setattr(dcn_paths, "SHAPES", ((4, 8),))
    (line,) = dcn_paths.op_rows(runs=1, backward=True)
    assert "grid_sample" in line and "gather" in line and "plain 3x3 conv" in line and "fwd+bwd" in line


def test_train_row_restores_the_gather_path(monkeypatch):
    gather = dcn.deform_conv2d_by_gather
    calls = []
    monkeypatch.setattr(dcn, "deform_conv2d_by_sampling",
                        lambda *a, _f=dcn.deform_conv2d_by_sampling, **k: calls.append(1) or _f(*a, **k))
    line = dcn_paths.train_row("centernet_resdcn18", size=64, runs=1)
    assert "centernet_resdcn18 train step" in line and calls  # the grid_sample side really ran it
    assert dcn.deform_conv2d_by_gather is gather
