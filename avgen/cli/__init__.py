"""`avgen` command line: a thin layer over the library.

Each subcommand lives in its own module `avgen.cli.<name>` exposing
`register(subparsers)`, which adds its parser and sets `func(args) -> int | None`.
Errors the user can fix (bad flags, missing files, bad data) are raised as
`UsageError`, `ValueError`, `FileNotFoundError` or `SourceError`, and reported here as
one line on stderr with exit code 2: never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Order = order in `avgen --help`.
SUBCOMMANDS = ["data", "train", "export", "generate", "bench", "demo", "seeds", "eval", "judges"]


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from avgen import __version__
    p = argparse.ArgumentParser(prog="avgen", description="Joint audio-video generation: data, training, "
                                "sampling, evaluation and a demo for small synchronized clips.")
    p.add_argument("--version", action="version", version=f"avgen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"avgen.cli.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from avgen.data.sources import SourceError
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (UsageError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            SourceError) as e:
        print(f"avgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avgen: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
