"""What the studio accepts from a person: limits, checks, and uploads conformed to the model's clip.

UI-free on purpose: every check raises `DemoInputError` (a ValueError) with one sentence a user can
act on, the Gradio layer turns it into `gr.Error`, and the tests call these functions directly.
Uploads are read by `avgen.data.io.read_given`, the reader `avgen generate --audio/--video` uses,
under the studio's limits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from avgen.data.clip import ClipSpec


class DemoInputError(ValueError):
    """Input the person can fix; the message says what was wrong and what is accepted."""


@dataclass(frozen=True)
class DemoLimits:
    """Bounds of what the studio accepts (shown in the UI, enforced by the checks below)."""

    min_steps: int = 1
    max_steps: int = 100
    max_guidance: float = 15.0  # guidance scales live in [0, max]; 1.0 turns that guidance off
    max_upload_s: float = 10.0  # decoding stops and the upload is refused past this
    max_upload_mb: int = 20  # also passed to Gradio, which refuses bigger uploads before they land
    silence_dbfs: float = -50.0  # an upload whose peak stays under this holds no usable sound
    keep_results: int = 32  # result folders kept on disk; older ones are deleted

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def media(self):
        """These limits as the library's `MediaLimits` (what `read_given` enforces)."""
        from avgen.data.io import MediaLimits

        return MediaLimits(self.max_upload_bytes, self.max_upload_s, self.silence_dbfs)


# ----------------------------------------------------------------------------- settings
MAX_PROMPT_CHARS = 1000  # far beyond any model's events; refused before it is split


def parse_prompt(text: str | None, vocab: Sequence[str], max_events: int) -> str:
    """A person's prompt -> the model's canonical form ("3 1 4"); "" is the unconditional prompt.

    Labels are separated by spaces or commas. When every label is one character (the digits),
    a run like "314" is read as "3 1 4", because that is how people type numbers.
    """
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise DemoInputError(f"the prompt must be text, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise DemoInputError(f"the prompt has {len(text)} characters; at most {MAX_PROMPT_CHARS} are read")
    words = text.replace(",", " ").split()
    if vocab and all(len(v) == 1 for v in vocab):
        words = [ch for w in words for ch in w]
    bad = [w for w in words if w not in vocab]
    if bad:
        raise DemoInputError(f"the prompt may only hold {describe_vocab(vocab)}; {_shown(bad[0])} is not one "
                             f"(leave it empty for an unconditional clip)")
    if len(words) > max_events:
        raise DemoInputError(f"the prompt has {len(words)} labels; this model puts at most {max_events} in a clip")
    return " ".join(words)


def describe_vocab(vocab: Sequence[str]) -> str:
    if tuple(vocab) == tuple("0123456789"):
        return "digits 0-9"
    return "the labels " + ", ".join(vocab)


def check_steps(steps, limits: DemoLimits) -> int:
    n = _whole(steps)
    if n is None:
        raise DemoInputError(f"steps must be a whole number, got {_shown(steps)}")
    if not limits.min_steps <= n <= limits.max_steps:
        raise DemoInputError(f"steps must lie between {limits.min_steps} and {limits.max_steps}, got {_shown(steps)}")
    return n


def check_scale(name: str, value, limits: DemoLimits) -> float:
    # compared before float(): an int too big for a float is refused, not an OverflowError
    if not _is_number(value) or not 0 <= value <= limits.max_guidance:
        raise DemoInputError(f"{name} must be a number between 0 and {limits.max_guidance:g}, got {_shown(value)}")
    return float(value)


def check_interval(interval) -> tuple[float, float] | None:
    """The noise levels where guidance acts: two numbers with 0 <= lo <= hi <= 1 (None: the mode's default)."""
    if interval is None:
        return None
    lo, hi = interval
    for v in (lo, hi):
        if not _is_number(v) or not 0 <= v <= 1:
            raise DemoInputError(f"the guidance noise levels must be numbers between 0 and 1, got {_shown(v)}")
    if lo > hi:
        raise DemoInputError(f"guidance cannot act from noise level {lo:g} up to a lower level {hi:g}")
    return float(lo), float(hi)


def check_seed(seed) -> int:
    # torch.Generator.manual_seed takes any 64-bit value; the UI offers non-negative ones
    n = _whole(seed)
    if n is None or not 0 <= n < 2 ** 63:
        raise DemoInputError(f"the seed must be a whole number from 0 to 2^63 - 1, got {_shown(seed)}")
    return n


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise DemoInputError(f"{name} must be one of {', '.join(choices)}, got {_shown(value)}")
    return value


def _is_number(x) -> bool:
    """A real, finite number (not a bool; ints of any size, which math.isfinite cannot take)."""
    if isinstance(x, (bool, np.bool_)):
        return False
    if isinstance(x, (int, np.integer)):
        return True
    return isinstance(x, (float, np.floating)) and math.isfinite(x)


def _shown(x) -> str:
    """x for a message: repr on one short line (a 5000-digit number, a pasted essay or an array
    would otherwise make a message of pages, or fail to print at all)."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool) and abs(int(x)).bit_length() > 64:
        return f"a number of about {int(abs(int(x)).bit_length() * math.log10(2)) + 1} digits"
    text = " ".join(repr(x).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(x) -> int | None:
    """x as an int if it is a whole number (Gradio sends 25.0 for 25), else None."""
    if not _is_number(x):
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    return int(x) if float(x).is_integer() else None


# ----------------------------------------------------------------------------- uploads
def check_upload_file(path) -> Path:
    """The upload reached the server (Gradio enforces the size limit too; API callers meet it in
    `read_given`)."""
    if path is None or str(path) == "":
        raise DemoInputError("no file was uploaded")
    p = Path(path)
    if not p.is_file():
        raise DemoInputError(f"{p.name}: the upload did not arrive")
    return p


def read_audio_upload(path, spec: ClipSpec, limits: DemoLimits) -> tuple[np.ndarray, list[str]]:
    """An uploaded or recorded sound -> (spec.num_samples,) on the model's clock, plus notes for the
    person (what was cut or padded). Refuses files without sound, silent ones and too long ones."""
    return _read_upload(path, spec, "audio", limits)


def read_video_upload(path, spec: ClipSpec, limits: DemoLimits) -> tuple[np.ndarray, list[str]]:
    """An uploaded video -> (spec.num_frames, H, W, C) frames at the model's size and rate (its sound,
    if any, is ignored: the model makes a new one), plus notes for the person."""
    return _read_upload(path, spec, "video", limits)


def _read_upload(path, spec: ClipSpec, kind: str, limits: DemoLimits) -> tuple[np.ndarray, list[str]]:
    """`avgen generate`'s reader with the studio's limits; messages name the file as the person knows
    it, not the server-side temp path."""
    from avgen.data.io import AVReadError, read_given

    p = check_upload_file(path)
    try:
        return read_given(p, spec, kind, limits.media(), name=p.name)
    except AVReadError as e:
        raise DemoInputError(str(e)) from None
