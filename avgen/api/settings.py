"""The generation settings: one table (`SETTINGS`) with each setting's type, limits, default and help,
from which the command line's arguments (`avgen generate`, `avgen eval --generate`) and the studio's
controls are derived, and one check (`GenerateSettings.check`) that all of them, and the library,
go through. A value outside its limits gets the same sentence wherever it was typed.

This module is light on purpose (no torch, no diffusers): the command line builds its parsers from it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from avgen.model.config import (DEFAULT_GUIDANCE_INTERVAL, DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS, DEVICES,
                                FAST_MAX_STEPS, SAMPLER_NAMES, default_interval)

MODES = ("t2av", "a2v", "v2a")  # text -> audio + video; audio -> video; video -> audio
MAX_SEED = 2 ** 63 - 1  # what torch.Generator.manual_seed takes


class SettingError(ValueError):
    """A setting outside its limits; the message names the setting, what it accepts and what it got."""


@dataclass(frozen=True)
class Setting:
    """One generation setting. `kind`: "int", "float", "choice", "bool" or "interval" (two noise
    levels lo <= hi in [0, 1]); `optional`: None is allowed (its meaning is in `help`)."""

    name: str
    kind: str
    help: str
    lo: float | None = None
    hi: float | None = None
    above: bool = False  # lo itself is excluded
    choices: tuple[str, ...] = ()
    optional: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def accepts(self) -> str:
        """What the setting accepts, in words."""
        if self.kind == "int":
            top = "2^63 - 1" if self.hi == 2 ** 63 - 1 else str(int(self.hi))
            return f"a whole number from {int(self.lo)} to {top}"
        if self.kind == "float":
            return f"a number {'above' if self.above else 'from'} {self.lo:g} {'up ' if self.above else ''}to {self.hi:g}"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false"
        return "two noise levels lo <= hi between 0 and 1"

    def check(self, value):
        """`value` normalised (25.0 -> 25 for a whole number, a list -> a tuple), or SettingError."""
        if value is None and self.optional:
            return None
        ok = self._normalise(value)
        if ok is _BAD:
            raise SettingError(f"{self.name} must be {self.accepts()}, got {shown(value)}")
        return ok

    def _normalise(self, v):
        if self.kind == "bool":
            return bool(v) if isinstance(v, (bool, np.bool_)) else _BAD
        if self.kind == "choice":
            return v if isinstance(v, str) and v in self.choices else _BAD
        if self.kind == "interval":
            if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list)) or len(v) != 2:
                return _BAD
            lo, hi = v
            return (float(lo), float(hi)) if is_number(lo) and is_number(hi) and 0 <= lo <= hi <= 1 else _BAD
        if not is_number(v):
            return _BAD
        if self.kind == "int":
            if isinstance(v, (float, np.floating)) and not float(v).is_integer():
                return _BAD
            v = int(v)  # compared as an int: a whole number too big for a float is refused, not an error
        low_ok = self.lo is None or (v > self.lo if self.above else v >= self.lo)
        if not low_ok or (self.hi is not None and v > self.hi):
            return _BAD
        return v if self.kind == "int" else float(v)

    def parse_text(self, text: str):
        """A command-line word -> the checked value (argparse's `type=`); SettingError names the setting."""
        if len(text) > 40:  # a typo; and Python refuses to parse ints of over 4300 digits
            raise SettingError(f"{self.name} must be {self.accepts()}, got {text[:12]!r}... ({len(text)} characters)")
        value: Any = text
        if self.kind in ("int", "float"):
            try:
                value = int(text) if self.kind == "int" else float(text)
            except ValueError:
                raise SettingError(f"{self.name} must be {self.accepts()}, got {text!r}") from None
        return self.check(value)


_BAD = object()


def is_number(x) -> bool:
    """A real, finite number (not a bool; ints of any size, which math.isfinite cannot take)."""
    if isinstance(x, (bool, np.bool_)):
        return False
    if isinstance(x, (int, np.integer)):
        return True
    return isinstance(x, (float, np.floating)) and math.isfinite(x)


def shown(x) -> str:
    """x for a message: repr on one short line (a 5000-digit number, a pasted essay or an array would
    otherwise make a message of pages, or fail to print at all)."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool) and abs(int(x)).bit_length() > 64:
        return f"a number of about {int(abs(int(x)).bit_length() * math.log10(2)) + 1} digits"
    text = " ".join(repr(x).split())
    return text if len(text) <= 60 else text[:57] + "..."


MAX_GUIDANCE = 20.0
lo, hi = DEFAULT_GUIDANCE_INTERVAL
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("seed", "int", "random seed; clip i of several uses seed + i", 0, MAX_SEED),
    Setting("steps", "int", f"denoising steps (network passes: euler N, heun 2N - 2, dpm++ N, fast N <= "
            f"{FAST_MAX_STEPS}; default {DEFAULT_STEPS}, fast {FAST_MAX_STEPS})", 1, 200, optional=True),
    Setting("sampler", "choice", "euler (first order), heun (second order), dpm++ (second-order multistep) or "
            f"fast (the weights' distilled student: {FAST_MAX_STEPS} passes, guidance folded in, from a prompt)",
            choices=SAMPLER_NAMES),
    Setting("guidance_scale", "float", "prompt guidance of the picture (1 = off)", 0.0, MAX_GUIDANCE),
    Setting("audio_guidance_scale", "float", "prompt guidance of the sound (default: the picture's)", 0.0,
            MAX_GUIDANCE, optional=True),
    Setting("modality_scale", "float", "guidance away from the pass without the cross-modal path (1 = off)",
            0.0, MAX_GUIDANCE),
    Setting("guidance_interval", "interval", f"noise levels (1 = pure noise) where prompt guidance acts (default: "
            f"{lo:g} {hi:g} from text, 0 1 when audio or video is given)", optional=True),
    Setting("timeline", "bool", "weights with a timeline input: draw one from the prompt, or read it from given "
            "audio / video; off: the model places the events itself"),
    Setting("postfilter", "bool", "weights with a spectral-detail postfilter: decode the generated sound through it"),
    Setting("duration", "float", "seconds per clip (default: the model's clip length)", 0.0, 60.0, above=True,
            optional=True),
    Setting("num_clips", "int", "clips to make (clip i uses seed + i)", 1, 100),
    Setting("device", "choice", "where to run: auto = CUDA, then Apple MPS, then the CPU", choices=DEVICES),
    Setting("mode", "choice", "t2av: from the prompt; a2v: the picture follows given sound; v2a: the sound "
            "follows a given picture", choices=MODES),
)}
del lo, hi


@dataclass
class GenerateSettings:
    """Everything that decides a generated clip besides the weights (recorded in the sidecar and the
    studio's report). `prompt` is read by the model's vocabulary when the clip is made."""

    prompt: str = ""
    seed: int = 0
    steps: int | None = None  # None: the sampler's default (DEFAULT_STEPS; FAST_MAX_STEPS for fast)
    sampler: str = "euler"
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    audio_guidance_scale: float | None = None
    modality_scale: float = 1.0
    guidance_interval: tuple[float, float] | None = None  # where prompt guidance acts; None: the mode's default
    duration: float | None = None
    num_clips: int = 1
    device: str = "auto"
    mode: str = "t2av"
    timeline: bool = True
    postfilter: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> "GenerateSettings":
        """Every setting against its line of `SETTINGS` (SettingError, one sentence); normalises in
        place (whole numbers given as 25.0, the mode's default guidance interval) and returns self."""
        if not isinstance(self.prompt, str):
            raise SettingError(f"the prompt must be text (labels such as '3 1 4'), got {shown(self.prompt)}")
        for f in fields(self):
            if f.name in SETTINGS:
                setattr(self, f.name, SETTINGS[f.name].check(getattr(self, f.name)))
        if self.seed + self.num_clips - 1 > MAX_SEED:
            raise SettingError(f"seed {self.seed} leaves no room for {self.num_clips} clips (clip i uses seed + i)")
        if self.guidance_interval is None:
            self.guidance_interval = default_interval(self.mode != "t2av")
        if self.sampler == "fast":
            if self.steps is not None and self.steps > FAST_MAX_STEPS:
                raise SettingError(f"the fast sampler makes a clip in 1 to {FAST_MAX_STEPS} passes, got steps {self.steps}")
            if self.mode != "t2av":
                raise SettingError(f"the fast sampler makes clips from a prompt (mode t2av), not {self.mode}: "
                                   "choose another sampler")
        if self.steps is None:
            self.steps = FAST_MAX_STEPS if self.sampler == "fast" else DEFAULT_STEPS
        return self

    def replace(self, **changes) -> "GenerateSettings":
        return GenerateSettings(**{**self.to_dict(), **changes})


def parse_spans(text: str) -> list[tuple[float, float]]:
    """"0:1,2:3" -> [(0.0, 1.0), (2.0, 3.0)]: time spans in seconds (ValueError, one sentence, otherwise)."""
    spans = []
    for part in (p.strip() for p in text.split(",")):
        a, sep, b = part.partition(":")
        try:
            lo, hi = float(a), float(b)
        except ValueError:
            lo = hi = math.nan
        if not sep or not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
            raise ValueError(f"spans are START:END in seconds, separated by commas (e.g. 0:1,2:3); got {part!r}")
        spans.append((lo, hi))
    return spans


__all__ = ["MAX_SEED", "MODES", "SETTINGS", "GenerateSettings", "Setting", "SettingError", "is_number", "parse_spans", "shown"]
