"""The ``segzoo`` command: ``segzoo train | eval | infer | export | convert | data check|convert |
weights list|fetch|import``.

Each subcommand is one module of this package (``train``, ``eval``, ``infer``, ``export``, ``convert``,
``data``, ``weights``) holding its help texts, a function that adds its arguments and a function that
runs it (parse, call the library, print); :data:`COMMANDS` is the table that names them. Adding a
subcommand is one module and one entry. ``tools/*.py`` are shims over :func:`command`. The speed
benchmark and the accuracy ledger import the competitors, so they live in the repository's
``benchmarks/`` package (``python -m benchmarks.speed``, ``python -m benchmarks.ledger`` from a
checkout), not here: :data:`MOVED` answers their old subcommands with that line.

User errors (a bad config, a missing or unreadable file, a model of the wrong task, an output
path that cannot be written) print one line ``error: ...`` on stderr and exit with status 2;
``--debug`` shows the traceback instead. Data that fails its checks exits with 1 after the
report, a non-finite loss with 1, and a training stopped by SIGINT/SIGTERM with 130/143 after
writing its checkpoint. The subcommand modules import torch, the models and the data readers
only inside the function that runs, so ``segzoo --help`` and ``segzoo SUB --help`` import none of
them (a test checks it).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

from segzoo.cli import convert, data, export, infer, train, weights
from segzoo.cli import eval as eval_

# subcommands that ran files of a source checkout: the installed package runs nothing outside itself
MOVED = {"benchmark": "python -m benchmarks.speed", "realdata": "python -m benchmarks.ledger"}


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: ``arguments(parser)`` declares its arguments, ``run(args)`` returns the exit status."""

    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    overrides: bool = False  # takes key.sub=value overrides anywhere on the line


COMMANDS: dict[str, Command] = {
    "train": Command(train.HELP, train.DESCRIPTION, train.arguments, train.run, overrides=True),
    "eval": Command(eval_.HELP, eval_.DESCRIPTION, eval_.arguments, eval_.run, overrides=True),
    "infer": Command(infer.HELP, infer.DESCRIPTION, infer.arguments, infer.run),
    "export": Command(export.HELP, export.DESCRIPTION, export.arguments, export.run),
    "convert": Command(convert.HELP, convert.DESCRIPTION, convert.arguments, convert.run),
    "data check": Command(data.CHECK_HELP, data.CHECK_DESCRIPTION, data.check_arguments, data.check_run,
                          overrides=True),
    "data convert": Command(data.CONVERT_HELP, data.CONVERT_DESCRIPTION, data.convert_arguments, data.convert_run),
    "weights list": Command(weights.LIST_HELP, weights.LIST_DESCRIPTION, weights.list_arguments, weights.run),
    "weights fetch": Command(weights.FETCH_HELP, weights.FETCH_DESCRIPTION, weights.fetch_arguments, weights.run),
    "weights import": Command(weights.IMPORT_HELP, weights.IMPORT_DESCRIPTION, weights.import_arguments,
                              weights.run),
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p = argparse.ArgumentParser(prog="segzoo", parents=[common],
                                description="segzoo: segmentation and detection model zoo")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, cmd in COMMANDS.items():
        *group, leaf = name.split()
        target = sub
        if group:
            if group[0] not in groups:
                g = sub.add_parser(group[0], help=f"{group[0]} utilities")
                groups[group[0]] = g.add_subparsers(dest=f"{group[0]}_command", required=True, metavar="COMMAND")
            target = groups[group[0]]
        c = target.add_parser(leaf, help=cmd.help, description=cmd.description, parents=[common],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.arguments(c)
        c.set_defaults(command_spec=cmd)
    return p


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]
    elif isinstance(e, OSError) and e.strerror and e.filename:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _exit_code(e: BaseException) -> int | None:
    """The exit status of an exception shown without a traceback; None for a bug (traceback)."""
    from segzoo.data import DataError
    from segzoo.engine.run_folder import RunFolderError
    from segzoo.engine.signals import TrainingInterrupted
    from segzoo.engine.trainer import NonFiniteLossError
    from segzoo.hub.cache import WeightsError

    if isinstance(e, TrainingInterrupted):
        return e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return 130
    if isinstance(e, (DataError, NonFiniteLossError)):
        return 1
    user = (ValueError, KeyError, TypeError, ImportError, RunFolderError, FileNotFoundError, PermissionError,
            NotADirectoryError, IsADirectoryError, FileExistsError, WeightsError)
    return 2 if isinstance(e, user) else None


def main(argv: list[str] | None = None) -> int:
    """Run ``segzoo ARGS``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = _parser()
    if argv[:1] and argv[0] in MOVED:
        rest = " ".join(a for a in argv[1:] if a != "--debug") or "--help"
        print(f"error: `segzoo {argv[0]}` is not part of the installed package (it imports the libraries it is "
              f"compared with); from a source checkout run `{MOVED[argv[0]]} {rest}`", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    cmd: Command = args.command_spec
    # overrides may come after options (train CONFIG --out DIR a.b=1): collect them here
    bad = [e for e in extra if not cmd.overrides or e.startswith("-") or "=" not in e]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if cmd.overrides:
        args.overrides = [*args.overrides, *extra]
    try:
        if getattr(args, "max_image_pixels", None) is not None:
            from segzoo.data.image import max_image_pixels, set_max_image_pixels

            set_max_image_pixels(args.max_image_pixels)
            if hasattr(args, "overrides"):  # the flag wins over the config's data.max_image_pixels
                args.overrides = [*args.overrides, f"data.max_image_pixels={max_image_pixels() or 0}"]
        return args.command_spec.run(args)
    except BaseException as e:
        code = _exit_code(e)
        if code is None or debug:
            raise
        from segzoo.engine.signals import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):
            print(str(e), file=sys.stderr)
        elif isinstance(e, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
        elif code == 1 and "\n" in str(e):
            print(f"error: {e}", file=sys.stderr)  # a data report: one problem a line
        else:
            print(f"error: {_message(e)}", file=sys.stderr)
        return code
    finally:
        if "torch.distributed" in sys.modules:  # a run that never imported torch started no process group
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


def command(name: str) -> Callable[[list[str] | None], int]:
    """The ``main`` of a ``tools/`` script: ``command("eval")(argv)`` runs ``segzoo eval ARGV``."""

    def run(argv: list[str] | None = None) -> int:
        return main([*name.split(), *(sys.argv[1:] if argv is None else argv)])

    run.__doc__ = f"segzoo {name} ARGS (see --help)"
    return run
