"""Clip I/O: mp4 (H.264 + AAC) for people and browsers, frames + wav for analysis, and a
decoder that honours the container's timing (edit lists / encoder delay) for any file.

Conventions: `Decoded` keeps a file's native rates and sizes; `conform()` turns it into a
`Clip` at a `ClipSpec` (resize + centre crop, grey/RGB, frame rate, sample rate, mono)
with the audio placed on the video clock: sample 0 of the clip is at the first video frame.
"""
from __future__ import annotations

import json
import math
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .clip import Clip, ClipSpec

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".m4v", ".avi")


class AVReadError(ValueError):
    """A media file cannot be used; the message names the file and the reason."""


# ----------------------------------------------------------------------------- writing
def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """(T, H, W, C) -> (T, H*s, W*s, C) nearest neighbour: pixels stay crisp for viewing."""
    if scale == 1:
        return frames
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def to_uint8_rgb(frames: np.ndarray) -> np.ndarray:
    x = np.clip(np.nan_to_num(frames) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x


CONTAINERS = {  # container -> (video codec, audio codec, pixel format)
    "mp4": ("libx264", "aac", "yuv420p"),
    "mov": ("libx264", "aac", "yuv420p"),
    "mkv": ("libx264", "aac", "yuv420p"),
    "webm": ("libvpx-vp9", "libopus", "yuv420p"),
}


def write_video(path, frames: np.ndarray, fps, audio: np.ndarray | None = None, sample_rate: int = 0,
                container: str | None = None, crf: int = 12, audio_bitrate: int = 64000) -> Path:
    """Write uint8 RGB frames (T, H, W, 3) and float audio (S,) or (S, ch) to a media file.

    The container follows the suffix (mp4, mov, mkv: H.264 + AAC; webm: VP9 + Opus). Opus
    only takes 48 kHz here, so webm audio is resampled to it. Written to a temporary name
    and renamed, so a crash never leaves half a file.
    """
    import av

    path = Path(path)
    fmt = container or path.suffix.lstrip(".").lower()
    if fmt not in CONTAINERS:
        raise ValueError(f"cannot write {path.name}: container must be one of {sorted(CONTAINERS)}")
    vcodec, acodec, pix = CONTAINERS[fmt]
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2  # yuv420p needs even sizes
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    if audio is not None:
        audio = np.clip(np.nan_to_num(np.asarray(audio, np.float32)), -1.0, 1.0)
        audio = audio[:, None] if audio.ndim == 1 else audio
        if acodec == "libopus" and sample_rate != 48000:
            audio, sample_rate = resample_audio(audio, sample_rate, 48000), 48000
    tmp = path.with_name(f".{path.name}.partial.{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(tmp), "w", format="matroska" if fmt == "mkv" else fmt) as out:
            vs = out.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1001))
            vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], pix
            vs.options = {"crf": str(crf)} if vcodec == "libx264" else {"crf": "20", "b": "0", "deadline": "realtime"}
            as_ = None
            if audio is not None:
                as_ = out.add_stream(acodec, rate=int(sample_rate))
                as_.layout, as_.bit_rate = ("mono" if audio.shape[1] == 1 else "stereo"), audio_bitrate
            for i, f in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                vf.pts = i
                out.mux(vs.encode(vf))
            out.mux(vs.encode())
            if as_ is not None:
                hop = 960 if acodec == "libopus" else 1024
                for i in range(0, len(audio), hop):
                    chunk = np.ascontiguousarray(audio[i: i + hop].T)
                    af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=as_.layout.name)
                    af.sample_rate, af.pts = int(sample_rate), i
                    out.mux(as_.encode(af))
                out.mux(as_.encode())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_mp4(clip: Clip, path, scale: int = 8, crf: int = 12, audio_bitrate: int = 64000) -> Path:
    """A clip as an mp4 (H.264 yuv420p + AAC) that browsers play, picture upscaled `scale`x
    by pixel repetition (a 32x32 clip is a postage stamp)."""
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return write_video(path, to_uint8_rgb(upscale(clip.frames, scale)), clip.fps, clip.audio, clip.sample_rate,
                       container="mp4", crf=crf, audio_bitrate=audio_bitrate)


def write_wav(audio: np.ndarray, sample_rate: int, path) -> Path:
    """float audio (S,) or (S, ch) in [-1, 1] -> 16-bit PCM WAV."""
    path = Path(path)
    x = np.asarray(audio, np.float32)
    x = x[:, None] if x.ndim == 1 else x
    pcm = (np.clip(np.nan_to_num(x), -1, 1) * 32767).round().astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return path


def write_frames(clip: Clip, out_dir) -> Path:
    """Native-resolution PNG frames + audio.wav + clip.json (prompt, events, rates) for analysis."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(to_uint8_rgb(clip.frames)):
        img = f[..., 0] if clip.frames.shape[3] == 1 else f
        Image.fromarray(img).save(out / f"frame_{i:04d}.png")
    write_wav(clip.audio, clip.sample_rate, out / "audio.wav")
    info = {"prompt": clip.prompt, "fps": clip.fps, "sample_rate": clip.sample_rate,
            "events": clip.truth(), "meta": clip.meta}
    (out / "clip.json").write_text(json.dumps(info, indent=2, default=str))
    return out


# ----------------------------------------------------------------------------- reading
@dataclass
class Decoded:
    """A media file decoded at its native rates, on the video clock."""

    path: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    frame_times: np.ndarray  # (T,) seconds from the first video frame
    fps: float
    audio: np.ndarray | None  # (S, ch) float32, sample 0 at `audio_offset_s` on the video clock
    sample_rate: int
    audio_offset_s: float  # audio start minus first video frame time (container timing honoured)
    complete: bool = True  # False: decoding stopped early (`stop_after_s`), the file goes on

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps if len(self.frames) else 0.0


def _audio_array(frame) -> np.ndarray:
    """An av.AudioFrame -> (n, ch) float32, whatever its sample format."""
    x = frame.to_ndarray()
    ch = len(frame.layout.channels)
    x = x.T if frame.format.is_planar else x.reshape(-1, ch)
    kind = x.dtype
    x = x.astype(np.float32)
    if np.issubdtype(kind, np.integer):
        x /= float(np.iinfo(kind).max) + 1.0
    return x


def _frame_rate(declared, times: np.ndarray) -> float:
    """The container's average rate when it agrees with the frames' timestamps (within 5%), else the
    timestamps' own rate: PyAV's `average_rate` is occasionally garbage (seen: -36161 fps)."""
    steps = np.diff(times)
    measured = 1.0 / float(np.median(steps)) if len(steps) and np.median(steps) > 0 else None
    rate = float(declared) if declared else None
    if rate is not None and rate > 0 and (measured is None or abs(rate / measured - 1) < 0.05):
        return rate
    return measured if measured is not None else 25.0


def _declared_rate(stream):
    """A stream's `average_rate`, or None where PyAV cannot make one: it builds a Fraction from the
    container's numbers and raises on a zero denominator (seen under load: Fraction(37, 0))."""
    try:
        return stream.average_rate
    except (ZeroDivisionError, ValueError, OverflowError):
        return None


def decode_av(path, max_duration_s: float | None = None, need_audio: bool = True, stop_after_s: float | None = None,
              max_side: int | None = None) -> Decoded:
    """Decode the first video and audio streams of a file.

    Times come from the frames' presentation timestamps after the decoder has applied
    the container's edit list / skip-samples (AAC priming, Opus pre-skip), so sound is
    where the file says it is. Bounds for files nobody vouches for: `max_duration_s` refuses a
    longer file (decoding stops at the limit), `stop_after_s` stops quietly once that much
    picture is decoded (`Decoded.complete` is then False), `max_side` shrinks bigger frames as
    they are decoded (keeping their aspect), so a 4K upload never sits in memory at 4K.
    """
    import av

    p = Path(path)
    if not p.exists():
        raise AVReadError(f"{p}: no such file")
    if p.is_dir():
        raise AVReadError(f"{p}: is a directory, expected a video file")
    try:
        container = av.open(str(p))
    except Exception as e:  # PyAV raises many error types for bad input
        raise AVReadError(f"{p}: cannot open as a video file ({type(e).__name__}: {e})") from None
    with container:
        vstreams, astreams = container.streams.video, container.streams.audio
        if not vstreams:
            raise AVReadError(f"{p}: has no video stream")
        if need_audio and not astreams:
            raise AVReadError(f"{p}: has no audio track")
        vs = vstreams[0]
        as_ = astreams[0] if astreams else None
        streams = [vs] + ([as_] if as_ is not None else [])
        frames, vtimes, chunks, a_start, sr, complete = [], [], [], None, 0, True
        try:
            for packet in container.demux(*streams):
                for fr in packet.decode():
                    t = float(fr.time) if fr.time is not None else None
                    if packet.stream is vs:
                        if t is None:
                            rate = _declared_rate(vs)
                            t = vtimes[-1] + 1 / float(rate if rate and rate > 0 else 25) if vtimes else 0.0
                        frames.append(fr.to_ndarray(format="rgb24", **_fitted_size(fr, max_side)))
                        vtimes.append(t)
                    else:
                        if a_start is None:
                            a_start, sr = (t if t is not None else 0.0), fr.sample_rate
                        chunks.append(_audio_array(fr))
                span = vtimes[-1] - vtimes[0] if vtimes else 0.0
                if max_duration_s is not None and span > max_duration_s:
                    raise AVReadError(f"{p}: the video is longer than the {max_duration_s:g} s limit")
                if stop_after_s is not None and span >= stop_after_s:
                    complete = False
                    break
        except AVReadError:
            raise
        except Exception as e:
            if not frames:
                raise AVReadError(f"{p}: cannot decode ({type(e).__name__}: {e})") from None
            # a truncated file: keep what decoded cleanly
    if not frames:
        raise AVReadError(f"{p}: no decodable video frames")
    if need_audio and not chunks:
        raise AVReadError(f"{p}: the audio track holds no decodable samples")
    vt = np.asarray(vtimes, np.float64)
    order = np.argsort(vt, kind="stable")
    vt, frames = vt[order], [frames[i] for i in order]
    fps = _frame_rate(_declared_rate(vs), vt)
    audio = np.concatenate(chunks) if chunks else None
    return Decoded(str(p), np.stack(frames), vt - vt[0], fps, audio, int(sr or 0),
                   float((a_start or 0.0) - vt[0]), complete)


def _fitted_size(frame, max_side: int | None) -> dict:
    """Reformat arguments that shrink `frame` to at most `max_side` pixels a side ({} if it fits)."""
    w, h = frame.width, frame.height
    if max_side is None or max(w, h) <= max_side:
        return {}
    k = max_side / max(w, h)
    return {"width": max(2, 2 * round(w * k / 2)), "height": max(2, 2 * round(h * k / 2)), "interpolation": "AREA"}


def _resize_frames(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre-crop to the target aspect, then area-resize. (T, H0, W0, 3) uint8 -> float (T, h, w, 3)."""
    from PIL import Image

    t, h0, w0, _ = frames.shape
    if (h0, w0) == (h, w):
        return frames.astype(np.float32) / 255.0
    target = w / h
    if w0 / h0 > target:  # too wide
        cw = int(round(h0 * target))
        x0, y0, ch, cw_ = (w0 - cw) // 2, 0, h0, cw
    else:
        chh = int(round(w0 / target))
        x0, y0, ch, cw_ = 0, (h0 - chh) // 2, chh, w0
    out = np.empty((t, h, w, 3), np.float32)
    for i, f in enumerate(frames):
        img = Image.fromarray(f[y0: y0 + ch, x0: x0 + cw_]).resize((w, h), Image.BOX)
        out[i] = np.asarray(img, np.float32) / 255.0
    return out


def resample_audio(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return x.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(sr), int(target))
    return resample_poly(x, target // g, sr // g, axis=0).astype(np.float32)


def conform(d: Decoded, spec: ClipSpec, start_s: float = 0.0, num_frames: int | None = None) -> Clip:
    """Decoded file -> Clip at `spec`, starting `start_s` after the first video frame.

    Frame t of the clip shows the source frame on screen at the centre of [t/fps, (t+1)/fps).
    """
    n_avail = int(math.floor((d.duration - start_s) * spec.fps + 1e-6))
    n = n_avail if num_frames is None else num_frames
    if n <= 0 or n > n_avail:
        raise AVReadError(f"{d.path}: too short ({d.duration:.2f} s) for {n} frames at {spec.fps} fps from {start_s:.2f} s")
    centres = start_s + (np.arange(n) + 0.5) / spec.fps
    src = np.clip(np.searchsorted(d.frame_times, centres, side="right") - 1, 0, len(d.frames) - 1)
    frames = _resize_frames(d.frames[src], spec.height, spec.width)
    if spec.channels == 1:
        frames = (frames @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    s_total = n * spec.samples_per_frame
    audio = np.zeros(s_total, np.float32)
    if d.audio is not None and len(d.audio):
        mono = resample_audio(d.audio.mean(axis=1), d.sample_rate, spec.sample_rate)
        # sample k of `mono` is at time audio_offset_s + k/sr on the video clock
        first = int(round((start_s - d.audio_offset_s) * spec.sample_rate))
        lo = max(first, 0)
        seg = mono[lo: first + s_total]
        audio[lo - first: lo - first + len(seg)] = seg
    meta = {"source": d.path, "start_s": float(start_s)}
    return Clip(frames.astype(np.float32), audio, spec.fps, spec.sample_rate, [], "", meta)


def read_clip(path, spec: ClipSpec | None = None, start_s: float = 0.0, duration: float | None = None,
              max_duration_s: float | None = None) -> Clip:
    """Read a video file with sound as a Clip at `spec` (whole file unless `duration` is given).

    With `spec=None` the file's own size, frame rate (rounded) and sample rate are kept, in RGB.
    """
    d = decode_av(path, max_duration_s=max_duration_s)
    if spec is None:
        h, w = d.frames.shape[1:3]
        fps = max(1, int(round(d.fps)))
        spec = ClipSpec(duration=max(d.duration, 1.0 / fps), height=h, width=w, channels=3, fps=fps,
                        sample_rate=d.sample_rate - d.sample_rate % fps)
    n = None if duration is None else int(round(duration * spec.fps))
    return conform(d, spec, start_s, n)


# ----------------------------------------------------------------------------- given media (A2V / V2A)
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
    """The cheap refusals, before any decoding: not a file, empty, too big, declared too long."""
    if not p.exists():
        raise AVReadError(f"{name}: no such file")
    if not p.is_file():
        raise AVReadError(f"{name}: is a directory, expected an audio or video file")
    size = p.stat().st_size
    if size == 0:
        raise AVReadError(f"{name}: is empty (0 bytes)")
    if limits.max_bytes is not None and size > limits.max_bytes:
        raise AVReadError(f"{name}: {size / 2 ** 20:.1f} MB is too big; files may be at most "
                          f"{limits.max_bytes / 2 ** 20:g} MB")


def _open_media(p: Path, limits: MediaLimits, name: str, what: str):
    """PyAV container of `p`; a file whose header declares more than the limit is refused unread."""
    import av

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
    import av

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
