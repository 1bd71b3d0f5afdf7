"""Clip I/O: mp4 (H.264 + AAC) for people and browsers, frames + wav for analysis, and a
decoder that honours the container's timing (edit lists / encoder delay) for any file.

Conventions: `Decoded` keeps a file's native rates and sizes; `conform()` turns it into a
`Clip` at a `ClipSpec` (resize + centre crop, grey/RGB, frame rate, sample rate, mono)
with the audio placed on the video clock: sample 0 of the clip is at the first video frame.
"""
from __future__ import annotations

import math
import stat
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image
from scipy.signal import resample_poly

from avgen.util import write_json

from .clip import Clip, ClipSpec

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".m4v", ".avi")

# ITU-R BT.601 luma weights (R, G, B): how a colour file becomes grey at `channels == 1`
LUMA = (0.299, 0.587, 0.114)


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(to_uint8_rgb(clip.frames)):
        img = f[..., 0] if clip.frames.shape[3] == 1 else f
        Image.fromarray(img).save(out / f"frame_{i:04d}.png")
    write_wav(clip.audio, clip.sample_rate, out / "audio.wav")
    info = {"prompt": clip.prompt, "fps": clip.fps, "sample_rate": clip.sample_rate,
            "events": clip.truth(), "meta": clip.meta}
    write_json(out / "clip.json", info)
    return out


# ----------------------------------------------------------------------------- reading
NOT_A_FILE = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_media_path(p: Path, name: str | None = None) -> None:
    """Refuse, before anything opens it, a path that is not a regular file: opening a named pipe blocks
    until someone writes to it, and a device such as /dev/zero never ends. One line naming it."""
    name = name or str(p)
    try:
        mode = p.stat().st_mode  # follows symlinks: a link to a file is a file
    except FileNotFoundError:
        raise AVReadError(f"{name}: no such file") from None
    except OSError as e:
        raise AVReadError(f"{name}: cannot be read ({e.strerror or type(e).__name__})") from None
    for test, what in NOT_A_FILE:
        if test(mode):
            raise AVReadError(f"{name}: is {what}, expected an audio or video file")
    if not stat.S_ISREG(mode):
        raise AVReadError(f"{name}: is not a regular file, expected an audio or video file")


def declared_duration(p: Path) -> float | None:
    """Seconds a media file's header declares (None when it declares none), without decoding it."""
    try:
        with av.open(str(p)) as container:
            if container.duration:
                return container.duration / 1e6  # AV_TIME_BASE units
            vs = container.streams.video
            if vs and vs[0].duration and vs[0].time_base:
                return float(vs[0].duration * vs[0].time_base)
    except Exception:  # noqa: BLE001 - unreadable: decode_av says why, in its own words
        return None
    return None


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
    p = Path(path)
    check_media_path(p)
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
        declared_rate = _declared_rate(vs)  # read while the file is open: PyAV >= 18.1.1 refuses it after
        as_ = astreams[0] if astreams else None
        streams = [vs] + ([as_] if as_ is not None else [])
        frames, vtimes, chunks, a_start, sr, complete = [], [], [], None, 0, True
        try:
            for packet in container.demux(*streams):
                for fr in packet.decode():
                    t = float(fr.time) if fr.time is not None else None
                    if packet.stream is vs:
                        if t is None:
                            rate = declared_rate
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
    fps = _frame_rate(declared_rate, vt)
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
        frames = (frames @ np.array(LUMA, np.float32))[..., None]
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
