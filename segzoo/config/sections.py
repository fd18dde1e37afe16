"""The typed sections of a config (``data`` with ``augment``, ``train``, ``eval``) and the whole
:class:`RunConfig`: every key is one :func:`~segzoo.config.fields.option` line in its frozen dataclass."""

from __future__ import annotations

import dataclasses
from typing import Any

from segzoo.config.fields import _plain, _Section, option


@dataclasses.dataclass(frozen=True)
class AugmentConfig(_Section):
    """Training augmentation (``data.augment``): the arguments of ``segzoo.data.build_transforms``."""

    size: int | tuple[int, int] = option(512, "crop size, an int or [height, width]", ge=1)
    scale: tuple[float, float] = option((0.5, 2.0), "scale-jitter range around size", gt=0)
    hflip: float = option(0.5, "horizontal flip probability", ge=0, le=1)
    color_jitter: float = option(0.2, "brightness/contrast/saturation jitter", ge=0)
    # semantic models (segzoo.data.transforms.semantic_transforms)
    crop: int | tuple[int, int] | None = option(None, "semantic: random crop [height, width] (default: size)", ge=1)
    base_size: int | tuple[int, int] | None = option(
        None, "semantic: the size the scale ratios are relative to (default: size); HRNet 2048, mmseg [1024, 2048]",
        ge=1)
    scale_step: float | None = option(None, "semantic: draw the scale ratio from a grid with this step (HRNet 0.1)",
                                      gt=0)
    cat_max_ratio: float = option(1.0, "semantic: redraw a crop where one class covers this share (mmseg 0.75)",
                                  gt=0, le=1)
    photometric: bool = option(False, "semantic: mmsegmentation's PhotoMetricDistortion")
    # detection and instance models (segzoo.data.transforms.instance_transforms)
    resize_short: int | tuple[int, ...] | None = option(
        None, "detection: shorter side length(s) to choose from (detectron2 / torchvision: 800)", ge=1)
    max_size: int = option(1333, "detection: cap of the longer side with resize_short", ge=1)
    affine: bool = option(False, "detection: CenterNet's random scale-and-shift crop to size")
    keep_res: bool = option(False, "detection with affine: evaluate at the image's own resolution "
                                   "(CenterNet --keep_res) instead of letterboxed to size")
    pca_lighting: float = option(0.0, "detection: CenterNet's PCA lighting noise (0.1); 0: off", ge=0)
    min_box_size: float = option(2.0, "detection: boxes smaller than this after augmentation are dropped", ge=0)
    crop_mode: str = option(
        "resized", "detection: resized (image fitted to size, then cropped), or crops at the image's own resolution "
        "(sliced training): random or object-centred (holding a random object)",
        choices=("resized", "random", "object-centred"))


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """The dataset of each split and how it is loaded (``data:``)."""

    type: str = option("shapes", "a segzoo.data.DATASET_TYPES key (shapes, coco, mask_folder, voc, yolo...) or auto")
    root: str = option("data/shapes", "shapes: where the generated files live")
    train: dict | None = option(None, "dataset arguments of the train split (see segzoo.data.build_dataset)")
    val: dict | None = option(None, "dataset arguments of the validation split")
    classes: tuple[str, ...] | None = option(None, "class names in label order: semantic data lists every label, "
                                             "background first (as num_classes counts); instance/detection data "
                                             "the object classes only. COCO and shapes take theirs from the files")
    binary: bool = option(False, "mask_folder: 0/255 masks, 255 -> label 1")
    mapping: dict | None = option(None, "mask_folder: {raw value: label}")
    ignore_index: int = option(255, "semantic label that is not scored")
    allow_empty: bool = option(False, "keep images without labels (reported as warnings)")
    check: bool = option(True, "run the data checks before training")
    max_image_pixels: int | None = option(
        None, "refuse image files declaring more pixels (width x height) than this before decoding them; null: "
              "SEGZOO_MAX_IMAGE_PIXELS or Pillow's 89478485; 0: no limit", ge=0)
    batch_size: int = option(8, "per process (global batch = batch_size x processes x grad_accum)", ge=1)
    val_batch_size: int | None = option(None, "evaluation batch size (default: batch_size)", ge=1)
    num_workers: int = option(2, "data-loading processes", ge=0)
    aspect_ratio_groups: int | None = option(
        None, "detection/instance/panoptic training: batches of one aspect-ratio group, this many bins per factor "
              "of two (torchvision's --aspect-ratio-group-factor, 3 in its recipes); null: off", ge=0)
    augment: AugmentConfig = option(AugmentConfig())


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    """The optimisation schedule and the training loop's switches (``train:``)."""

    epochs: int = option(10, "passes over the training data", ge=1)
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides epochs)", ge=1)
    optimizer: str = option("sgd", choices=("sgd", "adamw"))
    lr: float = option(0.01, "base learning rate", gt=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, le=1)
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas", ge=0, lt=1)
    weight_decay: float = option(1.0e-4, "not applied to norms and biases", ge=0)
    backbone_lr_mult: float = option(1.0, "learning-rate multiplier of the model.backbone parameters", ge=0)
    freeze_backbone: bool = option(False, "model.backbone.freeze(): frozen BatchNorm and weights")
    freeze_backbone_bn: bool = option(False, "the backbone's BatchNorm as FrozenBatchNorm2d (torchvision's: ImageNet "
                                             "statistics and affine kept) while its weights train")
    schedule: str = option("poly", "poly | cosine | constant | step (multiplied by gamma at each milestone)",
                           choices=("poly", "cosine", "constant", "step"))
    poly_power: float = option(0.9, gt=0)
    milestones: tuple[int, ...] = option((), "schedule step: where the lr is multiplied by gamma (in milestone_unit)",
                                         ge=1)
    milestone_unit: str = option("epoch", "unit of train.milestones", choices=("epoch", "step"))
    gamma: float = option(0.1, "schedule step: lr factor at each milestone", gt=0, le=1)
    norm_bias_decay: bool = option(False, "also decay norm weights and biases (the official HRNet, mmsegmentation "
                                          "and torchvision recipes do)")
    min_lr_ratio: float = option(0.0, "floor of the decay, as a fraction of lr", ge=0, le=1)
    warmup_steps: int = option(0, "linear warmup steps", ge=0)
    warmup_factor: float = option(0.001, "lr multiplier at step 0 of the warmup", gt=0, le=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", ge=1)
    clip_grad: float | None = option(None, "max gradient norm; null: no clipping", gt=0)
    amp: str | bool = option("auto", "auto: bf16/fp16 on CUDA, off elsewhere", choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool = option(False)
    compile: bool = option(False, "torch.compile the model")
    sync_bn: bool = option(False, "BatchNorm -> SyncBatchNorm under DDP on GPUs; no-op in a single process")
    precise_bn: int = option(0, "recompute BatchNorm running statistics over this many training batches before "
                                "each evaluation and the final checkpoint (0: off; frozen BatchNorm untouched)", ge=0)
    ema: bool = option(False, "keep an EMA of the weights; it is evaluated, kept as best and saved as ema.safetensors")
    ema_decay: float = option(0.9998, "EMA decay per update: ema = decay * ema + (1 - decay) * weights", gt=0, lt=1)
    ema_every: int = option(1, "optimizer steps between EMA updates", ge=1)
    ema_warmup: bool = option(False, "decay min(ema_decay, (1 + n) / (10 + n)) after n updates (short runs)")
    grad_checkpointing: bool = option(False, "recompute the backbone's activations in backward (less memory)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps", pattern=r"auto|cpu|mps|cuda(:\d+)?")
    seed: int = option(0, "seeds initialisation, data order, augmentation and dropout", ge=0)
    checkpoint_every: int = option(0, "optimizer steps between checkpoints (0: at the end of each epoch; N: every N "
                                      "steps, after each evaluation and at the end)", ge=0)
    early_stop_patience: int = option(0, "evaluations without improvement before stopping (0: never)", ge=0)
    progress: bool = option(True, "tqdm progress bar")
    tensorboard: bool = option(True, "also log to TensorBoard when it is installed")
    loggers: tuple[str, ...] = option(("jsonl", "tensorboard"), "where runs are logged (log.jsonl is always written)",
                                      choices=("jsonl", "tensorboard", "mlflow", "wandb"))
    tracking_uri: str | None = option(None, "mlflow: tracking URI (default: MLFLOW_TRACKING_URI, else the file store "
                                            "<run folder>/mlruns)")
    experiment: str = option("segzoo", "mlflow experiment / wandb project")
    wandb_mode: str = option("offline", "wandb: offline (<run folder>/wandb; wandb sync uploads it) or online",
                             choices=("offline", "online"))


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Section):
    """Evaluation during training and in ``segzoo eval`` (``eval:``)."""

    every: int = option(1, "epochs between evaluations (0: only at the end)", ge=0)
    metric: str = option("auto", "picks the best checkpoint; auto: miou, segm_AP, bbox_AP or pq by task")
    max_images: int | None = option(None, "evaluate only the first images", ge=1)
    num_pictures: int = option(4, "validation images drawn in predictions.png", ge=0)
    score_threshold: float = option(0.5, "detections drawn in pictures (when fewer than 3 reach it, the best ones "
                                    "below it too, in parentheses); metrics use every detection", ge=0, le=1)
    # the semantic evaluation protocol (segzoo.inference.semantic_probs)
    mode: str = option("whole", "semantic: whole (the image in one forward) or slide (windows of eval.crop)",
                       choices=("whole", "slide"))
    crop: int | tuple[int, int] | None = option(None, "eval.mode slide: window [height, width]", ge=1)
    stride: int | tuple[int, int] | None = option(None, "eval.mode slide: window step (default: 2/3 of crop)", ge=1)
    resize: int | tuple[int, int] | None = option(
        None, "semantic: resize each image (aspect kept) to fit this size before the forward, logits back to the "
              "image (mmseg's test Resize, e.g. [512, 2048]); null: full resolution", ge=1)
    scales: tuple[float, ...] = option((1.0,), "semantic: image scales averaged (HRNet: 0.5 ... 1.75)", gt=0)
    flip: bool = option(False, "semantic: also average the horizontally flipped image")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole config: ``model`` (builder name and arguments) and the typed sections.

    Attributes:
        model: ``{"name": registered model, **builder keyword arguments}`` (read-only by convention).
        name: the run's name (the config file's stem), used for the default run folder.
    """

    model: dict = dataclasses.field(default_factory=dict)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML-ready data (what :func:`load_config` reads back)."""
        return {"model": _plain(dict(self.model)), "data": self.data.to_dict(), "train": self.train.to_dict(),
                "eval": self.eval.to_dict()}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


SECTIONS: dict[str, type] = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
# keys that configs of earlier versions had, and what to do instead
REMOVED = {"train.log_every": "it was never read (every optimizer step is logged); delete it"}
