"""`avgen` command line: a thin layer over the library.

Each subcommand lives in its own module `avgen.cli.<name>` exposing
`register(subparsers)`, which adds its parser and sets `func(args) -> int | None`.
Errors the user can fix (bad flags, missing files, bad data, a file that cannot be
written) are raised as `UsageError`, `ValueError`, `OSError` or `SourceError`, and
reported here as one line on stderr with exit code 2: never a traceback. Numbers are
checked as they are parsed (`whole`, `number`): NaN, infinities, too many digits and
values outside a command's range are refused before anything runs.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys

# Order = order in `avgen --help`.
SUBCOMMANDS = ["data", "train", "export", "postfilter", "generate", "bench", "demo", "seeds", "eval", "judges"]


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the command ("avgen generate: error: ..."), exit code 2.
    Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


MAX_DIGITS = 30  # longer numbers are typos (and Python refuses to parse ints of over 4300 digits)


def whole(lo: int | None = None, hi: int | None = None):
    """argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        value = _parse(text, int, "a whole number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text!r} is outside {_range(lo, hi)}")
        return value
    parse.__name__ = "whole number"
    return parse


def number(lo: float | None = None, hi: float | None = None, above: bool = False):
    """argparse type: a finite float in [lo, hi] (in (lo, hi] with above=True)."""
    def parse(text: str) -> float:
        value = _parse(text, float, "a number")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (lo is not None and (value <= lo if above else value < lo)) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text!r} is outside {_range(lo, hi, above)}")
        return value
    parse.__name__ = "number"
    return parse


def add_guidance_interval(parser) -> None:
    """`--guidance-interval LO HI` (generate, eval): None = the library's default for the mode."""
    from avgen.model.pipeline import DEFAULT_GUIDANCE_INTERVAL

    lo, hi = DEFAULT_GUIDANCE_INTERVAL
    parser.add_argument("--guidance-interval", type=number(0.0, 1.0), nargs=2, default=None, metavar=("LO", "HI"),
                        help="noise levels (1 = pure noise) where prompt guidance acts (default: "
                        f"{lo:g} {hi:g} from text, 0 1 when audio or video is given)")


def add_timeline_flag(parser) -> None:
    """`--no-timeline` (generate, eval): give a timeline model no timeline (ablation, or to let it place events)."""
    parser.add_argument("--no-timeline", dest="timeline", action="store_false", default=argparse.SUPPRESS,
                        help="weights with a timeline input: do not draw one from the prompt (nor read one from "
                        "given audio / video); the model then places the events itself")


def add_postfilter_flag(parser) -> None:
    """`--no-postfilter` (generate, eval): decode the audio as the model drew it (see avgen/model/postfilter.py)."""
    parser.add_argument("--no-postfilter", dest="postfilter", action="store_false",
                        help="weights with a spectral-detail postfilter (WEIGHTS/postfilter): do not apply it; the "
                        "audio is decoded as the model drew it")


def timeline_arg(args) -> bool:
    return getattr(args, "timeline", True)


def interval_arg(args) -> tuple[float, float] | None:
    return None if args.guidance_interval is None else tuple(args.guidance_interval)


def _parse(text: str, kind, what: str):
    if len(text) > MAX_DIGITS:
        raise argparse.ArgumentTypeError(f"{text[:12]!r}... has {len(text)} characters; expected {what}")
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _range(lo, hi, above: bool = False) -> str:
    def show(x):
        return str(x) if isinstance(x, int) else f"{x:g}"
    if hi is None:
        return f"the range {'>' if above else '>='} {show(lo)}"
    if lo is None:
        return f"the range <= {show(hi)}"
    return f"{'(' if above else '['}{show(lo)}, {show(hi)}]"


SEED = whole(0, 2 ** 63 - 1)  # what torch.Generator.manual_seed takes (and the studio offers)


def build_parser() -> argparse.ArgumentParser:
    from avgen import __version__
    p = ArgumentParser(prog="avgen", description="Joint audio-video generation: data, training, "
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
