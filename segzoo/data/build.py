"""``build_dataset``: the dataset of one split from the typed ``data`` section, and the one table of readers.

Each reader builds itself from the config (its ``from_config`` classmethod: which ``data.<split>``
keys it takes, which it needs, which ``data.*`` fields it reads); :data:`DATASET_TYPES` maps each
``data.type`` to its reader. A new format is one module in :mod:`segzoo.data.formats` with a
``from_config`` and one row here.
"""

from __future__ import annotations

from segzoo.config import ConfigError, DataConfig
from segzoo.data.base import SplitArgs
from segzoo.data.formats.ade20k import ADE20K
from segzoo.data.formats.cityscapes import Cityscapes
from segzoo.data.formats.coco import CocoInstances, CocoSemantic
from segzoo.data.formats.coco_panoptic import CocoPanoptic
from segzoo.data.formats.cvat import CVAT
from segzoo.data.formats.detect import resolve_auto
from segzoo.data.formats.labelme import LabelMe
from segzoo.data.formats.mask_folder import MaskFolder
from segzoo.data.formats.multilabel import MultiLabelMasks
from segzoo.data.formats.realdata import NucleiTiles, TreeCrownTiles
from segzoo.data.formats.voc import VOC
from segzoo.data.formats.yolo import YOLO
from segzoo.data.image import set_max_image_pixels
from segzoo.data.synthetic.shapes import Shapes
from segzoo.data.synthetic.shapes_multilabel import ShapesMultiLabel
from segzoo.data.synthetic.shapes_panoptic import ShapesPanoptic
from segzoo.data.targets import Target
from segzoo.data.transforms import build_transforms

# data.type -> reader (its from_config reads the config)
DATASET_TYPES = {
    "shapes": Shapes, "coco": CocoInstances, "coco_semantic": CocoSemantic, "mask_folder": MaskFolder, "voc": VOC,
    "yolo": YOLO, "labelme": LabelMe, "cvat": CVAT, "cityscapes": Cityscapes, "ade20k": ADE20K, "nuclei": NucleiTiles,
    "tree_crowns": TreeCrownTiles, "coco_panoptic": CocoPanoptic, "shapes_panoptic": ShapesPanoptic,
    "mask_folders": MultiLabelMasks, "shapes_multilabel": ShapesMultiLabel,
}


def build_dataset(data_cfg: DataConfig, split: str, target: Target, *, train: bool | None = None,
                  with_transforms: bool = True):
    """The dataset of one split from a config's ``data`` section.

    ``data.type`` picks the reader (:data:`DATASET_TYPES`; ``auto`` recognises the layout at
    ``data.<split>.root``); ``data.<split>`` holds its arguments: ``shapes``: none needed
    (``num_train``, ``num_val``, ``size``, ``seed``); ``coco`` / ``coco_semantic``: ``images``
    (folder) and ``annotations`` (json); ``mask_folder``: ``images`` and ``masks`` folders; the
    format readers: ``root`` (and ``split``, ``classes``, ... as each takes them).

    Args:
        data_cfg: the typed ``data`` section (:class:`segzoo.config.DataConfig`).
        split: ``"train"`` or ``"val"``.
        target: what the items' targets hold (:mod:`segzoo.data.targets`): ``CLASS_MAP``, ``BOXES``,
            ``INSTANCE_MASKS`` or ``SEGMENTS``; a model's task gives it (``segzoo.tasks.get_task(model).target``).
        train: use the training augmentation (default: ``split == "train"``).
        with_transforms: attach the target's transform preset.
    """
    if not isinstance(data_cfg, DataConfig):
        raise TypeError(f"build_dataset takes the typed data section (RunConfig.data, a segzoo.config.DataConfig), "
                        f"got {type(data_cfg).__name__}; parse a mapping with "
                        "segzoo.config.parse_section(DataConfig, mapping, 'data.')")
    if data_cfg.max_image_pixels is not None:  # every reader checks file headers against it
        set_max_image_pixels(data_cfg.max_image_pixels)
    kind = data_cfg.type
    given = dict(getattr(data_cfg, split, None) or {})
    if kind == "auto":  # recognise the layout from data.<split>.root
        if not given.get("root"):
            raise ValueError(f"data.type auto needs data.{split}.root (the dataset folder or file)")
        root = given.pop("root")
        kind, found = resolve_auto(root, split)
        if data_cfg.classes is not None:  # data.classes wins over a classes.txt found beside the data
            found.pop("classes", None)
        given = {**DATASET_TYPES[kind].config_names(found), **given}
    if kind not in DATASET_TYPES:
        raise ValueError(f"unknown data.type {kind!r}; use one of {', '.join(DATASET_TYPES)}")
    train = split == "train" if train is None else train
    transforms = None
    if with_transforms:
        aug = data_cfg.augment.to_dict()
        if target.dense:
            aug["ignore_index"] = data_cfg.ignore_index
        transforms = build_transforms(target, train, **aug)
    args = SplitArgs(given, split, kind)
    try:
        dataset = DATASET_TYPES[kind].from_config(data_cfg, args, target, transforms)
    except FileNotFoundError as e:  # a wrong path in the config: name its key, without a traceback
        key = args.missing_path()
        if key is None:  # not a path of the config (a wheel not fetched, ...): the message says the fix
            raise ConfigError(f"data.{split} (data.type={kind}): {e}") from None
        raise ConfigError(f"data.{split}.{key}: {e}; fix the path in the config or override it with "
                          f"data.{split}.{key}=PATH") from None
    if data_cfg.classes is not None and not args.took_classes and \
            list(map(str, data_cfg.classes)) != list(dataset.classes):
        raise ConfigError(f"data.classes={list(data_cfg.classes)} but data.type={kind} takes its class names from its "
                          f"files: {list(dataset.classes)}; remove data.classes (or make it equal)")
    return dataset


__all__ = ["DATASET_TYPES", "build_dataset"]
