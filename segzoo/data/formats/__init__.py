"""The annotation formats segzoo reads, one module each, every reader an
:class:`~segzoo.data.records.AnnotatedImages` that gives its records itself (``objects``, or
``semantic_map`` for label maps) and answers ``segzoo data check`` through the base's ``check``:
COCO json (:mod:`.coco`, :mod:`.coco_json`), COCO-panoptic, Pascal VOC, YOLO, LabelMe, CVAT,
Cityscapes, ADE20K, mask folders and the real-data tiles (:mod:`.realdata`); :mod:`.detect`
recognises a layout (``data.type: auto``). A new format is one module here and one row in
:data:`segzoo.data.build.DATASET_TYPES`."""
