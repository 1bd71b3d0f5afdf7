"""`avgen` command line: a thin layer over the library.

Each subcommand lives in its own module `avgen.cli.<name>` exposing `register(subparsers)`, which
adds its parser and sets `func(args) -> int | None`; what they share is in `args.py`. Errors the user
can fix (bad flags, missing files, bad data, a file that cannot be written) are raised as
`UsageError`, `ValueError`, `OSError` or `SourceError`, and reported here as one line on stderr with
exit code 2: never a traceback. Numbers are checked as they are parsed: NaN, infinities, too many
digits and values outside a command's range are refused before anything runs.

The subcommand modules import only light modules at the top; the heavy ones (torch, diffusers,
gradio) are imported inside the functions that run a command, so `avgen --help` stays fast.
"""
from __future__ import annotations

import sys

from avgen import __version__
from avgen.cli import bench, data, demo, distill, eval, export, generate, judges, postfilter, seeds, train
from avgen.cli.args import SEED, ArgumentParser, UsageError, number, one_line, whole
from avgen.data.sources import SourceError

# Order = order in `avgen --help`.
SUBCOMMANDS = (data, train, export, postfilter, distill, generate, bench, demo, seeds, eval, judges)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="avgen", description="Joint audio-video generation: data, training, "
                       "sampling, evaluation and a demo for small synchronized clips.")
    p.add_argument("--version", action="version", version=f"avgen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0), or a bad flag already reported on one line (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        rc = args.func(args)
    except (UsageError, ValueError, OSError, SourceError) as e:
        print(f"avgen {args.command}: error: {one_line(e, 1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avgen: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


__all__ = ["SEED", "UsageError", "build_parser", "main", "number", "one_line", "whole"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
