"""What every `avgen` subcommand shares: the parser class (one-line errors), number types that refuse
NaN, infinities and values out of range, and the generation settings as options, derived from the one
settings table (`avgen.api.settings.SETTINGS`) that the studio's controls come from too."""
from __future__ import annotations

import argparse
import math

from avgen.api.settings import SETTINGS, GenerateSettings, Setting, SettingError
from avgen.util import one_line

MAX_DIGITS = 30  # longer numbers are typos (and Python refuses to parse ints of over 4300 digits)


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the command ("avgen generate: error: ..."), exit code 2.
    Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


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


# ----------------------------------------------------------------------------- generation settings
def setting_type(setting: Setting):
    """argparse type for one setting: its own check, its own sentence (argparse shows only an
    ArgumentTypeError's message verbatim)."""
    def parse(text: str):
        try:
            return setting.parse_text(text)
        except SettingError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = setting.kind
    return parse


def add_settings(parser, names: tuple[str, ...]) -> None:
    """Options for these generation settings, from the settings table: type, limits, help, default."""
    defaults = GenerateSettings()
    for name in names:
        s, default = SETTINGS[name], getattr(defaults, name)
        if s.kind == "bool":  # on by default: a --no-NAME switch
            parser.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_false",
                                help=f"turn off: {s.help}")
        elif s.kind == "interval":
            level = Setting(name, "float", s.help, 0.0, 1.0)
            parser.add_argument(s.flag, type=setting_type(level), nargs=2, default=None, metavar=("LO", "HI"),
                                help=s.help)
        elif s.kind == "choice":
            parser.add_argument(s.flag, choices=s.choices, default=default, help=f"{s.help} (default: {default})")
        else:
            shown = "" if s.optional else f" (default: {default})"
            parser.add_argument(s.flag, type=setting_type(s), default=default, metavar=name.split("_")[0].upper(),
                                help=f"{s.help}{shown}")


def settings_from_args(args, **given) -> GenerateSettings:
    """The `GenerateSettings` the parsed options (and `given` fields) describe, checked."""
    values = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    if values.get("guidance_interval") is not None:
        values["guidance_interval"] = tuple(values["guidance_interval"])
    return GenerateSettings(**{**values, **given}).check()


__all__ = ["SEED", "ArgumentParser", "UsageError", "add_settings", "number", "one_line", "setting_type",
           "settings_from_args", "whole"]
