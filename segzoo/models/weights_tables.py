"""Published weights of each family (one block per family; see :mod:`segzoo.weights`).

torchvision entries are read from torchvision's ``Weights`` enums (URL, hash, categories,
metrics). The official HRNet and CenterNet releases are on OneDrive, Baidu and Google
Drive, which give no direct, verifiable download: they are manual sources, with the page,
the file name and the reported numbers. Neither project publishes file sizes or
checksums, so none are listed (the converter checks the layout and class count instead).
"""

from __future__ import annotations

from torchvision.models import get_weight

from segzoo.convert.centernet import OFFICIAL_BGR
from segzoo.published import WeightsEntry, register_weights, torchvision_entry
from segzoo.registry import IMAGENET_MEAN, IMAGENET_STD

_VOC_SUBSET = "COCO train2017, the 20 Pascal VOC categories (+ background)"

# ---------------------------------------------------------------------------- FCN (torchvision)
register_weights(
    torchvision_entry("fcn_resnet50", "tv_coco_voc", "FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1", _VOC_SUBSET),
    torchvision_entry("fcn_resnet101", "tv_coco_voc", "FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1", _VOC_SUBSET),
)

# ---------------------------------------------------------------------------- DeepLabV3 (torchvision)
register_weights(
    torchvision_entry("deeplabv3_resnet50", "tv_coco_voc", "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
                      _VOC_SUBSET),
    torchvision_entry("deeplabv3_resnet101", "tv_coco_voc", "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
                      _VOC_SUBSET),
    torchvision_entry("deeplabv3_mobilenetv3_large", "tv_coco_voc",
                      "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1", _VOC_SUBSET),
)

# ---------------------------------------------------------------------------- Mask / Faster R-CNN (torchvision)
register_weights(
    torchvision_entry("maskrcnn_resnet50_fpn", "tv_coco", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
                      "COCO train2017 (80 categories on COCO's 90 ids)", detection=True),
    torchvision_entry("fasterrcnn_resnet50_fpn", "tv_coco", "FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
                      "COCO train2017 (80 categories on COCO's 90 ids)", detection=True),
)

# ---------------------------------------------------------------------------- HRNetV2 (official, manual)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
_HRNET_V11 = "https://github.com/HRNet/HRNet-Semantic-Segmentation/tree/pytorch-v1.1"
_HRNET_OCR = "https://github.com/HRNet/HRNet-Semantic-Segmentation/tree/HRNet-OCR"
_OCR_RELEASE = "https://github.com/hsfzxjy/models.storage/releases/download/HRNet-OCR/"


def _hrnet(model: str, tag: str, file_name: str, miou: float, split: str, page: str, link: str) -> WeightsEntry:
    return WeightsEntry(
        model=model, tag=tag, source="manual", converter="hrnet-official",
        dataset="Cityscapes (19 train ids)", classes=CITYSCAPES_CLASSES, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        metrics=(("miou", miou),), metric_source=f"official HRNet-Semantic-Segmentation README ({split})",
        licence="MIT (HRNet-Semantic-Segmentation); Cityscapes terms of use (non-commercial) apply",
        file_name=file_name, page=page, link=link,
    )


register_weights(
    _hrnet("hrnet_w18_small", "cityscapes", "hrnet_w18_small_v1_cityscapes_cls19_1024x2048_trainset.pth", 70.3,
           "trained on train, val single scale", _HRNET_V11 + "#small-models",
           "https://1drv.ms/u/s!Aus8VCZ_C_33gSEsg-2sxTmZL2AT?e=AqHbjh"),
    _hrnet("hrnet_w18_small_v2", "cityscapes", "hrnet_w18_small_v2_cityscapes_cls19_1024x2048_trainset.pth", 76.2,
           "trained on train, val single scale", _HRNET_V11 + "#small-models",
           "https://1drv.ms/u/s!Aus8VCZ_C_33gSAL4OurOW0RX4JH?e=ptLwpW"),
    _hrnet("hrnet_w48", "cityscapes", "hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth", 81.1,
           "trained on train, val single scale", _HRNET_V11 + "#big-models",
           "https://1drv.ms/u/s!Aus8VCZ_C_33gSlK7Fju_sXCxFUt?e=WZ96Ck"),
    _hrnet("hrnet_w48_ocr", "cityscapes", "hrnet_ocr_cs_8162_torch11.pth", 81.6,
           "trained on train, val single scale", _HRNET_OCR + "#segmentation-models",
           _OCR_RELEASE + "hrnet_ocr_cs_8162_torch11.pth"),
    _hrnet("hrnet_w48_ocr", "cityscapes_trainval", "hrnet_ocr_cs_trainval_8227_torch11.pth", 82.3,
           "trained on train+val, test set multi-scale + flip", _HRNET_OCR + "#segmentation-models",
           _OCR_RELEASE + "hrnet_ocr_cs_trainval_8227_torch11.pth"),
)

# ---------------------------------------------------------------------------- CenterNet (official, manual)
# COCO's 80 categories in category-id order (the official ctdet label order), from torchvision's list
COCO_CLASSES = tuple(c for c in get_weight("FasterRCNN_ResNet50_FPN_Weights.COCO_V1").meta["categories"]
                     if c not in ("__background__", "N/A"))
_CENTERNET_ZOO = "https://github.com/xingyizhou/CenterNet/blob/master/readme/MODEL_ZOO.md"
# the Google Drive folder that holds every file by name (the README's per-file link for
# resdcn18 is the same as exdet_coco_dla's, so the folder is the reliable pointer)
_DRIVE_FOLDER = "https://drive.google.com/drive/folders/1S3NnppRgXea_IG4WeyquJcnOB3I6G-LX"


def _centernet(model: str, tag: str, file_name: str, ap: tuple[float, float, float]) -> WeightsEntry:
    mean, std = OFFICIAL_BGR["coco"]
    return WeightsEntry(
        model=model, tag=tag, source="manual", converter="centernet-official",
        dataset="COCO train2017 (80 categories)", classes=COCO_CLASSES, mean=mean[::-1], std=std[::-1],
        metrics=(("box_ap", ap[0]), ("box_ap_flip", ap[1]), ("box_ap_multiscale", ap[2])),
        metric_source="official CenterNet MODEL_ZOO.md (COCO val2017; no test augmentation / flip / multi-scale)",
        licence="MIT (CenterNet); COCO annotations CC BY 4.0",
        file_name=file_name, page=_CENTERNET_ZOO, link=_DRIVE_FOLDER, convert_kwargs=(("convention", "coco"),),
    )


register_weights(
    _centernet("centernet_resdcn18", "coco", "ctdet_coco_resdcn18.pth", (28.1, 30.0, 33.2)),
    _centernet("centernet_resdcn101", "coco", "ctdet_coco_resdcn101.pth", (34.6, 36.2, 39.3)),
    _centernet("centernet_dla34", "coco", "ctdet_coco_dla_2x.pth", (37.4, 39.2, 41.7)),
    _centernet("centernet_dla34", "coco_1x", "ctdet_coco_dla_1x.pth", (36.3, 38.2, 40.7)),
)
