"""The ``segzoo`` command: ``segzoo train CONFIG [overrides]`` and ``segzoo data check CONFIG``."""

from __future__ import annotations

import argparse
import sys

OVERRIDES_HELP = "config overrides such as train.epochs=2 model.backbone=resnet18"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segzoo", description="segzoo: segmentation and detection model zoo")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", help="YAML config file (see configs/)")
    t.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    t.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    d = sub.add_parser("data", help="data utilities")
    dsub = d.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="check a config's data for label-convention and file problems")
    c.add_argument("config")
    c.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    from segzoo.data.convert import add_arguments

    add_arguments(dsub.add_parser("convert", help="convert a dataset (VOC, YOLO, LabelMe, CVAT, COCO, ...) to coco, "
                                  "mask_folder or yolo"))
    return p


def _load(args):
    from segzoo.config import load_config

    return load_config(args.config, args.overrides)


def train(args) -> int:
    from segzoo.config import dump
    from segzoo.engine.distributed import world_info
    from segzoo.engine.run import train_from_config

    cfg = _load(args)
    rank = world_info()[0]
    if rank == 0:
        print("# resolved config\n" + dump(cfg), flush=True)
    metrics = train_from_config(cfg, out_dir=args.out, resume=args.resume)
    if rank == 0:
        best = metrics["best"]
        shown = "n/a" if best is None else f"{best:.4f}"
        out = args.out or f"runs/{cfg['_name_']}"
        print(f"done: {metrics['step']} steps in {metrics['train_seconds']:.0f} s; best {metrics['metric']} = "
              f"{shown} (step {metrics['best_step']}); run folder: {out}")
    return 0


def data_check(args) -> int:
    from segzoo.engine.run import build_model, check_data

    cfg = _load(args)
    model = build_model(cfg)
    reports = check_data(cfg, model.spec.num_classes, model.spec.task)
    return 0 if all(r.ok for r in reports) else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "data_command", None) == "convert":
        from segzoo.data.convert import run

        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return run(args)
    # overrides may come after options (train CONFIG --out DIR a.b=1): collect them here
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = [*args.overrides, *extra]
    from segzoo.config import ConfigError
    from segzoo.data import DataError

    try:
        if args.command == "train":
            return train(args)
        return data_check(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
