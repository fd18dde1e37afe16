"""User errors on the command line print one line ``error: ...`` and exit 2: missing files, wrong types, folders
for files and files for folders, with the flag or key to fix."""

import numpy as np
import pytest
import torch
from PIL import Image

import segzoo
from segzoo.cli import main as cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    segzoo.save(segzoo.build("unet", num_classes=4, channels=[4, 8, 16, 32, 64]), root / "m.safetensors")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "a.png")
    (root / "file.txt").write_text("hi\n")
    (root / "folder").mkdir()
    (root / "c.yaml").write_text(
        f"model: {{name: unet, num_classes: 4, channels: [4, 8, 16, 32, 64]}}\n"
        f"data: {{type: shapes, root: {root / 'shapes'}, batch_size: 2, num_workers: 0, augment: {{size: 32}},\n"
        "       train: {num_train: 4, num_val: 2, size: 32}, val: {num_train: 4, num_val: 2, size: 32}}\n"
        "train: {max_steps: 1, device: cpu, progress: false, tensorboard: false}\n")
    return root


CASES = [
    # (arguments with {root}, what the line says)
    ("train {root}/c.yaml --out {root}/file.txt", "output folder {root}/file.txt: it is a file"),
    ("infer {root}/m.safetensors {root}/a.png --out {root}/file.txt", "output folder {root}/file.txt: it is a file"),
    ("eval {root}/m.safetensors --data {root}/c.yaml --out {root}/file.txt", "it is a file; give a folder"),
    ("train {root}/c.yaml data.type=yolo data.train=null data.train.root={root}/file.txt", "not a YOLO dataset"),
    ("data convert {root}/file.txt {root}/dst --to coco", "no known layout fits"),
    ("infer {root}/m.safetensors {root}/a.png --out {root}/o --alpha 3", "--alpha is the opacity"),
    ("train {root}/folder", "is a folder, not a YAML config file"),
    ("infer {root}/folder {root}/a.png --out {root}/o", "is a folder; pass the .safetensors file"),
    ("infer {root}/file.txt {root}/a.png --out {root}/o", "not a safetensors file"),
    ("eval {root}/m.safetensors --data {root}/missing.yaml", "config file not found"),
    ("data check {root}/folder", "is a folder, not a YAML config file"),
    ("infer {root}/m.safetensors {root}/a.png --out {root}/o --max-image-pixels many", "number of pixels"),
]


@pytest.mark.parametrize(("args", "said"), CASES, ids=[c[0].split()[0] + ": " + c[1][:30] for c in CASES])
def test_user_errors_are_one_line(args, said, files, capsys):
    code = cli(args.format(root=files).split())
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert said.format(root=files) in lines[0], lines[0]


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="needs a machine without a CUDA device 7")
def test_infer_device_error_names_the_flag(files, capsys):
    assert cli(["infer", str(files / "m.safetensors"), str(files / "a.png"), "--out", str(files / "o"),
                "--device", "cuda:7"]) == 2
    err = capsys.readouterr().err
    assert "--device='cuda:7'" in err and "train.device" not in err
