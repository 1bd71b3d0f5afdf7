"""Media a caller holds fixed (A2V / V2A): a file nobody vouches for (an upload, `avgen generate
--audio/--video`), read under limits and put on the model's clock, with notes on how it was fitted."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from .clip import ClipSpec
from .io import AVReadError, check_media_path, conform, decode_av

GIVEN_KINDS = ("audio", "video")


@dataclass(frozen=True)
class MediaLimits:
    """What `read_given` accepts from a file nobody vouches for (None: no bound)."""
    max_bytes: int | None = None
    max_seconds: float | None = None  # longer files are refused, before decoding past the limit
    silence_dbfs: float | None = -50.0  # a sound whose loudest sample stays under this holds nothing to follow


def read_given(path, spec: ClipSpec, kind: str, limits: MediaLimits = MediaLimits(),
               name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """The modality a caller holds fixed, read from a file and put on the model's clock, plus notes
    for a person saying how the file was fitted (cut or padded). `avgen generate --audio/--video`
    and the studio's uploads both come through here.

        kind="audio" (A2V): any file with a sound track -> (spec.num_samples,) mono float32, cut to
                            the clip or padded with silence
        kind="video" (V2A): any video -> (spec.num_frames, H, W, C) float32 at spec's size and rate,
                            cut or padded with blank frames (its sound is not needed)

    Everything unusable raises `AVReadError` with one line that starts with `name` (default: the
    path): missing, a directory, empty, too big, not media, no such stream, undecodable, too long,
    silent. Without `limits.max_seconds`, decoding stops once the clip is covered.
    """
    if kind not in GIVEN_KINDS:
        raise ValueError(f"kind must be one of {GIVEN_KINDS}, got {kind!r}")
    if path is None or str(path) == "":
        raise AVReadError(f"no {kind} file given")
    p = Path(path)
    name = name or str(p)
    try:
        _check_given_file(p, limits, name)
        if kind == "audio":
            return _given_audio(p, spec, limits, name)
        return _given_video(p, spec, limits, name)
    except AVReadError as e:  # the decoders name the path; the caller chose how the file is named
        raise AVReadError(" ".join(str(e).replace(str(p), name).split())) from None


def _check_given_file(p: Path, limits: MediaLimits, name: str) -> None:
    """The cheap refusals, before any decoding: not a regular file, empty, too big."""
    check_media_path(p, name)
    size = p.stat().st_size
    if size == 0:
        raise AVReadError(f"{name}: is empty (0 bytes)")
    if limits.max_bytes is not None and size > limits.max_bytes:
        raise AVReadError(f"{name}: {size / 2 ** 20:.1f} MB is too big; files may be at most "
                          f"{limits.max_bytes / 2 ** 20:g} MB")


def _open_media(p: Path, limits: MediaLimits, name: str, what: str):
    """PyAV container of `p`; a file whose header declares more than the limit is refused unread."""
    try:
        container = av.open(str(p))
    except Exception as e:  # PyAV raises many error types for input that is not media
        raise AVReadError(f"{name}: not a readable audio or video file ({type(e).__name__})") from None
    declared = container.duration / 1e6 if container.duration else None  # AV_TIME_BASE units
    if limits.max_seconds is not None and declared is not None and declared > limits.max_seconds + 0.1:
        container.close()
        raise AVReadError(_too_long(name, what, limits.max_seconds))
    return container


def _too_long(name: str, what: str, max_s: float) -> str:
    if what == "video":
        return f"{name}: the video is longer than the {max_s:g} s limit"
    return f"{name}: the sound is longer than {max_s:g} s; give at most {max_s:g} s (the model makes clips of a few seconds)"


def decode_audio(container, sample_rate: int, max_s: float | None = None, stop_s: float | None = None,
                 name: str = "") -> tuple[np.ndarray, bool]:
    """The first sound track of an open PyAV container -> (mono float32 at `sample_rate`, complete), sample
    0 at time 0 of the file's clock (a track that starts late is preceded by silence).

    PyAV's resampler does the format, channel and rate conversion, so every codec and layout takes the
    same path; the decoder applies the container's edit list (AAC priming). Decoding stops, refusing
    the file, once the sound runs past `max_s`; or quietly (complete=False) once it passes `stop_s`.
    """
    if not container.streams.audio:
        raise AVReadError(f"{name}: has no sound track")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks, start_s, n, complete = [], None, 0, True
    try:
        for frame in container.decode(container.streams.audio[0]):
            start_s = (frame.time or 0.0) if start_s is None else start_s
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
            n += frame.samples * sample_rate / frame.sample_rate
            end_s = start_s + n / sample_rate
            if max_s is not None and end_s > max_s:
                raise AVReadError(_too_long(name, "audio", max_s))
            if stop_s is not None and end_s >= stop_s:
                complete = False
                break
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except AVReadError:
        raise
    except Exception as e:  # a truncated file: keep what decoded cleanly
        if not chunks:
            raise AVReadError(f"{name}: the sound track cannot be decoded ({type(e).__name__})") from None
    x = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    shift = round((start_s or 0.0) * sample_rate)
    return (np.pad(x, (shift, 0)) if shift >= 0 else x[-shift:]), complete


def peak_dbfs(x: np.ndarray) -> float:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def _given_audio(p: Path, spec: ClipSpec, limits: MediaLimits, name: str) -> tuple[np.ndarray, list[str]]:
    stop_s = None if limits.max_seconds is not None else spec.duration + 0.5
    with _open_media(p, limits, name, "audio") as container:
        x, complete = decode_audio(container, spec.sample_rate, limits.max_seconds, stop_s, name)
    if limits.silence_dbfs is not None and peak_dbfs(x) < limits.silence_dbfs:
        raise AVReadError(f"{name}: holds no sound (its loudest sample is under {limits.silence_dbfs:g} dBFS)")
    note = fit_note("sound", len(x) / spec.sample_rate, spec.duration, "silence", complete)
    x = np.pad(x[: spec.num_samples], (0, max(0, spec.num_samples - len(x))))
    return x, [note] if note else []


def _given_video(p: Path, spec: ClipSpec, limits: MediaLimits, name: str) -> tuple[np.ndarray, list[str]]:
    with _open_media(p, limits, name, "video"):
        pass  # the header's duration alone can refuse a long file
    stop_s = None if limits.max_seconds is not None else spec.duration + 0.5
    # frames are area-shrunk while decoding to a few times the model's size: conform() resizes them anyway
    decoded = decode_av(p, max_duration_s=limits.max_seconds, need_audio=False, stop_after_s=stop_s,
                        max_side=8 * max(spec.height, spec.width, 32))
    n = min(spec.num_frames, int(math.floor(decoded.duration * spec.fps + 1e-6)))
    frames = conform(decoded, spec, 0.0, n).frames
    note = fit_note("video", decoded.duration, spec.duration, "blank frames", decoded.complete)
    # blank frames are the dataset's "nothing on screen", so padding adds no event
    frames = np.concatenate([frames, np.zeros((spec.num_frames - n, *frames.shape[1:]), frames.dtype)])
    return frames, [note] if note else []


def fit_note(what: str, have_s: float, need_s: float, padding: str, complete: bool = True) -> str:
    """The sentence telling a person how their file was fitted to the clip ('' when it fit)."""
    if not complete:
        return f"used the first {need_s:g} s of the {what}"
    if have_s > need_s + 1e-3:
        return f"used the first {need_s:g} s of the {have_s:.1f} s {what}"
    if have_s < need_s - 1e-3:
        return f"the {what} lasts {have_s:.1f} s: padded with {padding} to {need_s:g} s"
    return ""

