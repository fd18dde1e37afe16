"""The data package is task-neutral: target kinds decide, readers declare their config keys, and
``build_dataset`` takes the typed section."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from segzoo.config import DataConfig
from segzoo.data import DATASET_TYPES, Shapes, build_dataset
from segzoo.data.base import ConfigReader
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS, MULTI_HOT, SEGMENTS, TARGETS
from tests.data_layouts import data_config

DATA = Path(__file__).resolve().parents[2] / "segzoo" / "data"
TASK_NAME = r"""["'](semantic|instance|detection|panoptic)["']"""
TASK_TEST = re.compile(rf"""\btask\s*(==|!=|\bin\b|\bnot in\b)\s*[("']|{TASK_NAME}\s*(==|!=|\bin\b)"""
                       rf"""|(==|!=)\s*{TASK_NAME}""")


def test_no_task_name_is_compared_in_the_data_package():
    found = [f"{p.relative_to(DATA)}:{i}: {line.strip()}" for p in sorted(DATA.rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if TASK_TEST.search(line)]
    assert not found, "data code decides by the target kind's attributes, not by a task name:\n" + "\n".join(found)


def test_the_target_kinds():
    assert set(TARGETS) == {CLASS_MAP, INSTANCE_MASKS, BOXES, SEGMENTS, MULTI_HOT}
    assert MULTI_HOT.dense and not MULTI_HOT.label_map and not MULTI_HOT.boxes_only and CLASS_MAP.dense
    assert CLASS_MAP.label_map and not CLASS_MAP.masks and BOXES.boxes_only and not INSTANCE_MASKS.boxes_only
    assert SEGMENTS.per_box == ("iscrowd",) and INSTANCE_MASKS.per_box == ()


def test_build_dataset_takes_the_typed_section_and_the_target_decides(tmp_path):
    cfg = data_config({"type": "shapes", "root": str(tmp_path / "s"), "train": {"num_train": 2, "num_val": 1,
                                                                                   "size": 32}})
    assert isinstance(cfg, DataConfig)
    sem = build_dataset(cfg, "train", CLASS_MAP, with_transforms=False)
    boxes = build_dataset(cfg, "train", BOXES, with_transforms=False)
    inst = build_dataset(cfg, "train", INSTANCE_MASKS, with_transforms=False)
    assert sem[0][1].shape == (32, 32) and sem.target is CLASS_MAP
    assert "masks" not in boxes[0][1] and inst[0][1]["masks"].dtype == torch.uint8
    collated = CLASS_MAP.collate([sem[0], sem[1]])
    assert collated[1].shape == (2, 32, 32)
    with pytest.raises(TypeError, match="typed data section"):
        build_dataset(cfg.to_dict(), "train", CLASS_MAP)
    with pytest.raises(TypeError, match="segzoo.data.targets.Target"):
        Shapes(tmp_path / "s", "train", "semantic", num_train=2, num_val=1, size=32)


def test_every_reader_declares_the_config_keys_its_constructor_takes():
    for kind, cls in DATASET_TYPES.items():
        assert issubclass(cls, ConfigReader), kind
        assert set(cls.config_required) <= set(cls.config_keys) and set(cls.config_paths) <= set(cls.config_keys)
        if cls.from_config.__func__ is ConfigReader.from_config.__func__:  # keys passed to the constructor as named
            params = inspect.signature(cls).parameters
            assert set(cls.config_keys) <= set(params), f"{kind}: {set(cls.config_keys) - set(params)}"
            assert len(cls.targets) == 1 or "target" in params, kind
