"""Onset envelopes and event detection: one code path for picture and sound.

Each modality becomes a `Track`, a sequence of feature frames (centre times, non-negative
magnitudes per channel):
  video: grey frames area-shrunk to <= 64 px, then their local contrast |frame - blurred
         frame| per pixel (strokes and edges), one feature frame per video frame;
  audio: mono resampled to 16 kHz, mel magnitudes with a hop of one grid step (2 ms).
From a track the same functions give
  - the onset envelope `arrivals()`: the rise in dB of the log-compressed features between
    frames `lag` apart, averaged over channels by their share of the power. For sound it is
    spectral flux, weighted towards sound that starts out of quiet (`salience`); for the
    picture it measures what arrived: a digit appearing adds strokes (an onset), one
    vanishing removes them and scores 0, one digit replaced by another scores its new
    strokes. Local contrast needs no background model, so a frame mostly covered by content,
    a textured, drifting or flickering background, are all read the right way round.
  - the activity level in dB and the events: hysteresis segments of that level relative to
    the clip's own floor and peak, with each onset moved to the arrival peak next to it.
Only decoded pixels and samples are read, never a dataset's metadata.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from einops import rearrange
from scipy.ndimage import gaussian_filter, maximum_filter1d
from scipy.signal import resample_poly
from torchaudio.functional import melscale_fbanks


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TrackConfig:
    """How one modality's features become an envelope and events (see `VIDEO` and `AUDIO`)."""
    eps: float  # magnitude floor of the dB compression: differences below it are codec noise
    lag: int  # arrivals compare feature frames this many frames apart
    above_floor_db: float  # an event's level exceeds the clip's floor (10th percentile) by this much ...
    below_peak_db: float  # ... and comes within this much of the clip's loudest frame
    hysteresis_db: float  # an event ends when the level falls this far below the start threshold
    merge_gap_s: float  # quieter gaps shorter than this stay inside one event (closures within a word)
    min_event_s: float  # shorter blips are not events
    refine_s: float  # an onset moves to the strongest arrival within this distance of the crossing
    noise_percentile: float = 20.0  # each channel's own noise floor: this percentile of it over time ...
    noise_factor: float = 2.0  # ... times this joins the floor, so steady hiss or texture does not flicker
    level_percentile: float | None = None  # the level pools features by this percentile, not the mean
    gate_db: float | None = None  # arrivals in frames this far below the clip's loudest count less (pro rata)
    context_db: float | None = None  # ... and arrivals after a moment within this of the loudest count less
    context_s: float = 0.1  # ... that moment: the loudest frame in this long before the rise


# The picture: a pixel change under ~5/255 is compression noise; an event may be any brightness
# over its background; one frame of lag (the frame-to-frame change). The level is the 95th
# percentile of local contrast: the strokes of a digit, which cover 5-20 % of the frame, stand
# out of a textured background that a mean over all pixels would let dominate.
VIDEO = TrackConfig(eps=0.02, lag=1, above_floor_db=6.0, below_peak_db=20.0, hysteresis_db=3.0,
                    merge_gap_s=0.05, min_event_s=0.05, refine_s=0.03, level_percentile=95.0)
# The sound: magnitudes under -80 dBFS are silence; flux over 16 ms, one window length, so a rise
# is seen across the window rather than between two almost identical frames, and an onset that a
# codec smears over a few ms still adds up to one peak; rises 30 dB under the clip's peak, or
# within 30 dB of it in the 0.1 s before, count less (see `salience`).
AUDIO = TrackConfig(eps=1e-4, lag=8, above_floor_db=15.0, below_peak_db=35.0, hysteresis_db=6.0,
                    merge_gap_s=0.10, min_event_s=0.05, refine_s=0.02, gate_db=30.0, context_db=30.0)


@dataclass(frozen=True)
class OnsetConfig:
    grid_s: float = 0.002  # the common time grid of both envelopes (500 Hz)
    video_max_side: int = 64  # frames are area-shrunk to at most this many pixels per side
    audio_rate: int = 16000  # analysis sample rate
    n_fft: int = 256  # 16 ms window at 16 kHz
    n_mels: int = 40
    fmin: float = 50.0
    fmax: float = 7600.0
    video: TrackConfig = VIDEO
    audio: TrackConfig = AUDIO

    @property
    def hop(self) -> int:
        hop = self.grid_s * self.audio_rate
        if abs(hop - round(hop)) > 1e-9:
            raise ValueError(f"grid_s * audio_rate must be a whole number of samples, got {hop}")
        return int(round(hop))


# ----------------------------------------------------------------------------- the decoded signal
@dataclass
class AVSignal:
    """Decoded picture and sound on the video clock, at native rates.

    frames: (T, H, W) float32 grey in [0, 1], frame t shown from frame_times[t];
    audio: (S,) float32 mono, sample 0 at video time 0 (silence where the file had none).
    """
    frames: np.ndarray
    frame_times: np.ndarray
    fps: float
    audio: np.ndarray
    sample_rate: int
    source: str = ""

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps

    @classmethod
    def from_clip(cls, clip, max_side: int = 64, source: str = "") -> "AVSignal":
        frames = shrink(grey(clip.frames), max_side)
        times = np.arange(len(frames)) / clip.fps
        return cls(frames, times, float(clip.fps), clip.audio.astype(np.float32), int(clip.sample_rate), source)

    @classmethod
    def from_decoded(cls, d, max_side: int = 64) -> "AVSignal":
        """`avgen.data.io.Decoded` -> signal; the audio is placed by the container's timing.

        The frame rate is read from the frames' own timestamps: PyAV's stream `average_rate`
        has been seen to return garbage on a few percent of decodes of the same file."""
        frames = shrink(grey(d.frames.astype(np.float32) / 255.0), max_side)
        fps = 1.0 / float(np.median(np.diff(d.frame_times))) if len(d.frame_times) > 1 else float(d.fps)
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"{d.path}: cannot tell the frame rate from its timestamps")
        n = int(round(len(d.frames) / fps * d.sample_rate))
        audio = np.zeros(n, np.float32)
        if d.audio is not None and len(d.audio):
            mono = d.audio.mean(axis=1) if d.audio.ndim == 2 else d.audio
            first = int(round(-d.audio_offset_s * d.sample_rate))  # file sample at video time 0
            lo = max(first, 0)
            seg = mono[lo: first + n]
            audio[lo - first: lo - first + len(seg)] = seg
        return cls(frames, np.asarray(d.frame_times, np.float64), fps, audio, int(d.sample_rate), d.path)


def grey(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) float -> (T, H, W) intensity: the RMS over the colour channels; C=1 passes through.

    A grey pixel keeps its level; a saturated colour keeps 58% of it, where luma (BT.601) would keep
    11% of a pure blue: a blue shape on black is an event to see, not a faint smudge."""
    if frames.shape[-1] == 1:
        return frames[..., 0].astype(np.float32)
    rgb = frames[..., :3].astype(np.float32)
    return np.sqrt(np.einsum("thwc,thwc->thw", rgb, rgb) / 3.0, dtype=np.float32)


def shrink(frames: np.ndarray, max_side: int) -> np.ndarray:
    """(T, H, W) -> area mean over k x k blocks, k the smallest factor giving <= max_side per side.

    The few edge pixels past a multiple of k are dropped: cheaper than a resampler and, for
    envelopes of whole-frame change, invisible. A side shorter than k (a 2 x 1000 strip) is averaged
    whole, so at least one pixel is left of it.
    """
    k = max(1, math.ceil(max(frames.shape[1:]) / max_side))
    if k == 1:
        return frames
    kh, kw = min(k, frames.shape[1]), min(k, frames.shape[2])
    h, w = frames.shape[1] // kh * kh, frames.shape[2] // kw * kw
    return rearrange(frames[:, :h, :w], "t (h a) (w b) -> t h w a b", a=kh, b=kw).mean(axis=(3, 4))


# ----------------------------------------------------------------------------- tracks
@dataclass
class Track:
    """One modality as feature frames: `feats[i]` (D magnitudes >= 0) centred at `times[i]`."""
    times: np.ndarray  # (N,) seconds on the video clock
    feats: np.ndarray  # (N, D)
    span_s: float  # the time one feature frame stands for
    cfg: TrackConfig


def video_track(sig: AVSignal, cfg: OnsetConfig = OnsetConfig()) -> Track:
    return Track(sig.frame_times + 0.5 / sig.fps, rearrange(local_contrast(sig.frames), "t h w -> t (h w)"),
                 1.0 / sig.fps, cfg.video)


def local_contrast(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) -> |frame - blurred frame| (a difference of Gaussians at a stroke's width)."""
    sigma = max(frames.shape[1:]) / 24  # ~1.3 px at 32 px: about a digit's stroke width
    return np.abs(frames - gaussian_filter(frames, sigma=(0, sigma, sigma), mode="nearest"))


def audio_track(sig: AVSignal, cfg: OnsetConfig = OnsetConfig()) -> Track:
    x = resample(sig.audio, sig.sample_rate, cfg.audio_rate)
    n_frames = int(sig.duration / cfg.grid_s) + 1  # frame i centred at i * grid_s
    mel = mel_spectrogram(x, cfg.audio_rate, cfg.n_fft, cfg.hop, cfg.n_mels, cfg.fmin, cfg.fmax, n_frames)
    return Track(np.arange(n_frames) * cfg.grid_s, mel, cfg.grid_s, cfg.audio)


def tracks(sig: AVSignal, cfg: OnsetConfig = OnsetConfig()) -> dict[str, Track]:
    return {"video": video_track(sig, cfg), "audio": audio_track(sig, cfg)}


def resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return x.astype(np.float32)

    g = math.gcd(int(sr), int(target))
    return resample_poly(x, target // g, sr // g).astype(np.float32)


@functools.lru_cache(maxsize=16)
def mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, mel_scale: str = "htk") -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular mel filters (torchaudio's definition); "slaney" also
    takes Slaney's area normalisation, as librosa's default does."""
    norm = "slaney" if mel_scale == "slaney" else None
    fb = melscale_fbanks(n_fft // 2 + 1, fmin, min(fmax, sr / 2), n_mels, sr, norm=norm, mel_scale=mel_scale)
    return fb.numpy().astype(np.float32)


def mel_spectrogram(x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int, fmin: float, fmax: float,
                    n_frames: int | None = None, mel_scale: str = "htk", power: float = 1.0) -> np.ndarray:
    """Mel spectrogram (N, n_mels) of |STFT| ** power, frame i centred on sample i * hop (zero
    padded at both ends). Magnitudes are scaled so that a full-scale sine gives about 1 in
    its band, whatever n_fft.
    """
    n_frames = n_frames or len(x) // hop + 1
    padded = np.zeros((n_frames - 1) * hop + n_fft, np.float32)
    body = x[: max(0, len(padded) - n_fft // 2)]
    padded[n_fft // 2: n_fft // 2 + len(body)] = body
    win = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    spec = np.abs(np.fft.rfft(frames * win, axis=1)) * (2.0 / win.sum())
    return (spec ** power).astype(np.float32) @ mel_filters(sr, n_fft, n_mels, fmin, fmax, mel_scale)


# ----------------------------------------------------------------------------- shared analysis
def compress_db(track: Track) -> np.ndarray:
    """Magnitudes in dB above a floor (so silence is 0, not -inf). The floor is `eps` plus each
    channel's own noise floor: a steady hiss in a band, or the texture at a pixel, fluctuates
    around its floor and so barely rises, while an onset rises far above it."""
    cfg = track.cfg
    noise = np.percentile(track.feats, cfg.noise_percentile, axis=0) if len(track.feats) else 0.0
    return 20.0 * np.log10(1.0 + track.feats / (cfg.eps + cfg.noise_factor * noise))


def arrivals(track: Track) -> tuple[np.ndarray, np.ndarray]:
    """The onset envelope: the rise in dB over `lag` feature frames, at the midpoint of the two,
    averaged over channels weighted by their share of the later frame's power.

    Weighting by where the energy is (not by channel count) keeps what is quiet next to a loud
    sound out of the onsets: codec noise that AAC spreads into the empty bands around a pure
    tone's end, or texture next to a digit's strokes, while a quiet sound starting in silence
    still rises in the channels that carry it. Each rise is then weighted by `salience`.
    Returns (times (N - lag,), values (N - lag,)); for video (lag 1) the midpoint of frames
    t-1 and t is the boundary where frame t appears.
    """
    lag = track.cfg.lag
    c = compress_db(track)
    power = track.feats[lag:].astype(np.float64) ** 2
    share = power / np.maximum(power.sum(axis=1, keepdims=True), 1e-30)
    rise = (np.maximum(c[lag:] - c[:-lag], 0.0) * share).sum(axis=1)
    return 0.5 * (track.times[lag:] + track.times[:-lag]), rise * salience(track)


def salience(track: Track) -> np.ndarray:
    """(N - lag,) weights of the rises into frames lag..N-1, in [0, 1], for sound that starts
    out of quiet. A rise counts less, in proportion to power,
      - the further its frame lies more than `gate_db` below the clip's loudest: what a codec
        smears ahead of a sharp onset (AAC pre-echo, 40-60 dB down) stops competing with the
        onset, while a soft true start (the "s" of "seven", ~25 dB down) keeps full weight;
      - the louder the `context_s` before it, once that comes within `context_db` of the
        loudest: a new syllable inside a word is not a new event, a word out of silence is.
    """
    cfg, lag = track.cfg, track.cfg.lag
    weight = np.ones(len(track.feats) - lag)
    if cfg.gate_db is None and cfg.context_db is None:
        return weight
    level = level_db(track)
    rel = level - level.max()
    if cfg.gate_db is not None:
        weight *= np.minimum(1.0, 10.0 ** ((rel[lag:] + cfg.gate_db) / 10.0))
    if cfg.context_db is not None:

        width = max(1, int(round(cfg.context_s / track.span_s)))
        # loudest of frames [t - lag - width + 1, t - lag]: the moment before the rise into t
        before = maximum_filter1d(rel, width, origin=(width - 1) // 2, mode="nearest")[:-lag]
        weight *= np.minimum(1.0, 10.0 ** ((-cfg.context_db - before) / 10.0))
    return weight


def level_db(track: Track) -> np.ndarray:
    """Activity of each feature frame in dB (floored at eps): the mean power, or the given
    percentile of the magnitudes."""
    q = track.cfg.level_percentile
    x = track.feats.astype(np.float64)
    power = np.mean(x ** 2, axis=1) if q is None else np.percentile(x, q, axis=1) ** 2
    return 10.0 * np.log10(power + track.cfg.eps ** 2)


def envelope(track: Track, grid_s: float, n: int) -> np.ndarray:
    """The arrivals deposited on the common grid (n points, step grid_s): each value is split
    linearly between the two grid points around its time, so sub-step timing is kept."""
    times, values = arrivals(track)
    pos = times / grid_s
    i0 = np.floor(pos).astype(int)
    w1 = pos - i0
    out = np.zeros(n + 1, np.float64)
    for idx, w in ((i0, 1.0 - w1), (i0 + 1, w1)):
        ok = (idx >= 0) & (idx <= n)
        np.add.at(out, idx[ok], (values * w)[ok])
    return out[:n]


# ----------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Detected:
    """One detected event: it starts at `onset_s` and lasts until `end_s`."""
    onset_s: float
    end_s: float
    strength: float  # the arrival envelope at the onset

    @property
    def duration(self) -> float:
        return self.end_s - self.onset_s


def hysteresis_runs(level: np.ndarray, on: float, off: float) -> list[tuple[int, int]]:
    """[start, stop) index runs that begin where level >= on and last while level >= off."""
    runs, start = [], None
    for i, v in enumerate(level):
        if start is None and v >= on:
            start = i
        elif start is not None and v < off:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(level)))
    return runs


def merge_runs(runs: list[tuple[float, float]], min_gap: float) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] < min_gap:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def detect_events(track: Track) -> list[Detected]:
    """Events of one modality; see the module docstring. Empty when nothing stands out."""
    cfg = track.cfg
    level = level_db(track)
    floor, peak = float(np.percentile(level, 10)), float(level.max())
    on = max(floor + cfg.above_floor_db, peak - cfg.below_peak_db)
    if on > peak:
        return []
    half = track.span_s / 2
    runs = [(track.times[a] - half, track.times[b - 1] + half)
            for a, b in hysteresis_runs(level, on, on - cfg.hysteresis_db)]
    runs = [r for r in merge_runs(runs, cfg.merge_gap_s) if r[1] - r[0] >= cfg.min_event_s - 1e-9]
    ft, fv = arrivals(track)
    events = []
    for start, end in runs:
        near = np.flatnonzero(np.abs(ft - start) <= cfg.refine_s + 1e-9)
        best = near[np.argmax(fv[near])] if len(near) else None
        onset = float(ft[best]) if best is not None and fv[best] > 0 else float(start)
        events.append(Detected(onset, float(end), float(fv[best]) if best is not None else 0.0))
    return events


def onsets(events: list[Detected]) -> np.ndarray:
    return np.array([e.onset_s for e in events], np.float64)
