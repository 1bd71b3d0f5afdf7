"""What the studio accepts from a person: limits, checks, and uploads conformed to the model's clip.

UI-free on purpose: every check raises `DemoInputError` (a ValueError) with one sentence a user can
act on, the Gradio layer turns it into `gr.Error`, and the tests call these functions directly.
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


# ----------------------------------------------------------------------------- settings
def parse_prompt(text: str | None, vocab: Sequence[str], max_events: int) -> str:
    """A person's prompt -> the model's canonical form ("3 1 4"); "" is the unconditional prompt.

    Labels are separated by spaces or commas. When every label is one character (the digits),
    a run like "314" is read as "3 1 4", because that is how people type numbers.
    """
    words = (text or "").replace(",", " ").split()
    if vocab and all(len(v) == 1 for v in vocab):
        words = [ch for w in words for ch in w]
    bad = [w for w in words if w not in vocab]
    if bad:
        raise DemoInputError(f"the prompt may only hold {describe_vocab(vocab)}; {bad[0]!r} is not one "
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
        raise DemoInputError(f"steps must be a whole number, got {steps!r}")
    if not limits.min_steps <= n <= limits.max_steps:
        raise DemoInputError(f"steps must lie between {limits.min_steps} and {limits.max_steps}, got {n}")
    return n


def check_scale(name: str, value, limits: DemoLimits) -> float:
    if value is None or not _is_number(value) or not 0.0 <= float(value) <= limits.max_guidance:
        raise DemoInputError(f"{name} must be a number between 0 and {limits.max_guidance:g}, got {value!r}")
    return float(value)


def check_seed(seed) -> int:
    # torch.Generator.manual_seed takes any 64-bit value; the UI offers non-negative ones
    n = _whole(seed)
    if n is None or not 0 <= n < 2 ** 63:
        raise DemoInputError(f"the seed must be a whole number from 0 to 2^63 - 1, got {seed!r}")
    return n


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise DemoInputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x) -> int | None:
    """x as an int if it is a whole number (Gradio sends 25.0 for 25), else None."""
    if not _is_number(x):
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    return int(x) if float(x).is_integer() else None


# ----------------------------------------------------------------------------- uploads
def check_upload_file(path, limits: DemoLimits) -> Path:
    """The file exists and is not too big (Gradio enforces the size too; API callers meet it here)."""
    if path is None or str(path) == "":
        raise DemoInputError("no file was uploaded")
    p = Path(path)
    if not p.is_file():
        raise DemoInputError(f"{p.name}: the upload did not arrive")
    size = p.stat().st_size
    if size > limits.max_upload_bytes:
        raise DemoInputError(f"{p.name}: {size / 2 ** 20:.1f} MB is too big; uploads may be at most "
                             f"{limits.max_upload_mb} MB")
    return p


def decode_audio(path, sample_rate: int, max_s: float) -> np.ndarray:
    """Any file with a sound track (wav, mp3, ogg, webm, m4a, a video...) -> mono float32 at `sample_rate`,
    sample 0 at time 0 of the file's clock (a track that starts late is preceded by silence).

    PyAV's resampler does the format, channel and rate conversion, so every codec and layout
    takes the same path; the decoder applies the container's edit list (AAC priming). Decoding
    stops as soon as the sound runs past `max_s`.
    """
    import av

    p = Path(path)
    try:
        container = av.open(str(p))
    except Exception as e:  # PyAV raises many error types for input that is not media
        raise DemoInputError(f"{p.name}: not a readable audio or video file ({type(e).__name__})") from None
    chunks, start_s, n = [], None, 0
    with container:
        if not container.streams.audio:
            raise DemoInputError(f"{p.name}: has no sound track")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for frame in container.decode(container.streams.audio[0]):
                start_s = (frame.time or 0.0) if start_s is None else start_s
                chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
                n += frame.samples * sample_rate / frame.sample_rate
                if start_s + n / sample_rate > max_s:
                    raise DemoInputError(f"{p.name}: the sound is longer than {max_s:g} s; upload at most "
                                         f"{max_s:g} s (the model makes clips of a few seconds)")
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        except DemoInputError:
            raise
        except Exception as e:
            if not chunks:
                raise DemoInputError(f"{p.name}: the sound track cannot be decoded ({type(e).__name__})") from None
    x = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    shift = round((start_s or 0.0) * sample_rate)
    return np.pad(x, (shift, 0)) if shift >= 0 else x[-shift:]


def peak_dbfs(x: np.ndarray) -> float:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def read_audio_upload(path, spec: ClipSpec, limits: DemoLimits) -> tuple[np.ndarray, list[str]]:
    """An uploaded or recorded sound -> (spec.num_samples,) on the model's clock, plus notes for the
    person (what was cut or padded). Refuses files without sound, silent ones and too long ones."""
    p = check_upload_file(path, limits)
    x = decode_audio(p, spec.sample_rate, limits.max_upload_s)
    if peak_dbfs(x) < limits.silence_dbfs:
        raise DemoInputError(f"{p.name}: holds no sound (its loudest sample is under {limits.silence_dbfs:g} dBFS)")
    note = fit_note("sound", len(x) / spec.sample_rate, spec.duration, "silence")
    x = np.pad(x[: spec.num_samples], (0, max(0, spec.num_samples - len(x))))
    return x, [note] if note else []


def read_video_upload(path, spec: ClipSpec, limits: DemoLimits) -> tuple[np.ndarray, list[str]]:
    """An uploaded video -> (spec.num_frames, H, W, C) frames at the model's size and rate (its sound,
    if any, is ignored: the model makes a new one), plus notes for the person."""
    from avgen.data.io import AVReadError, conform, decode_av

    p = check_upload_file(path, limits)
    try:
        decoded = decode_av(p, max_duration_s=limits.max_upload_s, need_audio=False)
        n = min(spec.num_frames, int(math.floor(decoded.duration * spec.fps + 1e-6)))
        frames = conform(decoded, spec, 0.0, n).frames
    except AVReadError as e:  # its message names the server-side temp path; the person knows the file name
        raise DemoInputError(str(e).replace(str(p), p.name)) from None
    note = fit_note("video", decoded.duration, spec.duration, "blank frames")
    # blank frames are the dataset's "nothing on screen", so padding adds no event
    frames = np.concatenate([frames, np.zeros((spec.num_frames - n, *frames.shape[1:]), frames.dtype)])
    return frames, [note] if note else []


def fit_note(what: str, have_s: float, need_s: float, padding: str) -> str:
    """The sentence telling a person how their upload was fitted to the clip ('' when it fit)."""
    if have_s > need_s + 1e-3:
        return f"used the first {need_s:g} s of the {have_s:.1f} s {what}"
    if have_s < need_s - 1e-3:
        return f"the {what} lasts {have_s:.1f} s: padded with {padding} to {need_s:g} s"
    return ""
