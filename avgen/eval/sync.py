"""Temporal sync measures: global AV offset, event matching, and AV-Align for comparison.

- `estimate_offset`: cross-correlation of the z-scored video and audio onset envelopes over
  +-500 ms, peak refined below the grid step by a parabola through its neighbours; positive
  when the audio is late. Confidence is SyncNet's idea on a correlation curve: how far the
  peak stands above the curve's median (in Pearson units, so 0..~1 whatever the clip).
- `match_onsets`: one-to-one matching of two onset lists within a tolerance (one video
  frame), maximising the number of pairs, then precision / recall / F1.
- `av_align`: AV-Align in its reference form (Yariv et al. 2024, TempoTokens `av_align.py`):
  librosa-style audio onsets and local maxima of the mean optical-flow magnitude, scored by
  their intersection over union within one frame. Reported for comparison only: it is weak on
  clean clips (see docs/FIELD.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal
from scipy.optimize import linear_sum_assignment

from avgen.signal.onsets import AVSignal, mel_spectrogram, resample, shrink


# ----------------------------------------------------------------------------- global offset
@dataclass
class OffsetEstimate:
    offset_ms: float  # NaN when either envelope is flat (nothing happens in one modality)
    confidence: float  # correlation peak minus the curve's median
    lags_ms: np.ndarray  # (L,) the lags tried
    curve: np.ndarray  # (L,) normalised cross-correlation at each lag


def zscore(x: np.ndarray) -> np.ndarray | None:
    sd = float(x.std())
    return None if sd < 1e-12 else (x - x.mean()) / sd


def cross_correlation(video: np.ndarray, audio: np.ndarray, max_lag: int) -> np.ndarray:
    """c[k] = mean_t video[t] * audio[t + lag_k] for lag_k = -max_lag..max_lag (zeros outside).

    Dividing by the full length, not by the overlap, makes large lags slightly less likely:
    a conservative prior, since a lag that leaves part of the clip unexplained should not win
    on the part that remains.
    """
    full = signal.correlate(audio, video, mode="full", method="fft") / len(video)  # index n-1 is lag 0
    mid = len(video) - 1
    lo, hi = mid - max_lag, mid + max_lag + 1
    out = np.zeros(2 * max_lag + 1)
    src_lo, src_hi = max(lo, 0), min(hi, len(full))
    out[src_lo - lo: src_hi - lo] = full[src_lo:src_hi]
    return out


def parabolic_peak(curve: np.ndarray, i: int) -> float:
    """Sub-sample position of a peak at index i: vertex of the parabola through i-1, i, i+1."""
    if i == 0 or i == len(curve) - 1:
        return float(i)
    a, b, c = curve[i - 1], curve[i], curve[i + 1]
    den = a - 2 * b + c
    return float(i) if den >= 0 else float(i + 0.5 * (a - c) / den)


def estimate_offset(video_env: np.ndarray, audio_env: np.ndarray, grid_s: float,
                    max_lag_s: float = 0.5) -> OffsetEstimate:
    """Global AV offset from two onset envelopes on the same grid (see module docstring)."""
    max_lag = int(round(max_lag_s / grid_s))
    lags_ms = np.arange(-max_lag, max_lag + 1) * grid_s * 1000.0
    v, a = zscore(video_env), zscore(audio_env)
    if v is None or a is None:
        return OffsetEstimate(math.nan, 0.0, lags_ms, np.zeros(len(lags_ms)))
    curve = cross_correlation(v, a, max_lag)
    i = int(np.argmax(curve))
    offset = (parabolic_peak(curve, i) - max_lag) * grid_s * 1000.0
    return OffsetEstimate(float(offset), float(curve[i] - np.median(curve)), lags_ms, curve)


# ----------------------------------------------------------------------------- event matching
@dataclass
class Match:
    precision: float
    recall: float
    f1: float  # NaN when both lists are empty: nothing to agree or disagree on
    pairs: list[tuple[int, int]]  # (index in ref, index in pred)
    errors_s: np.ndarray  # pred - ref for each pair


def match_onsets(ref: np.ndarray, pred: np.ndarray, tol_s: float) -> Match:
    """Largest one-to-one matching with |pred - ref| <= tol_s, the closest among equals.

    Solved as an assignment whose forbidden pairs cost more than any feasible matching, so
    the solver first maximises the number of pairs, then minimises their total error.
    """
    ref, pred = np.asarray(ref, float), np.asarray(pred, float)
    pairs: list[tuple[int, int]] = []
    if len(ref) and len(pred):
        dist = np.abs(ref[:, None] - pred[None, :])
        big = (min(len(ref), len(pred)) + 1) * (tol_s + 1.0)
        rows, cols = linear_sum_assignment(np.where(dist <= tol_s + 1e-9, dist, big))
        pairs = [(int(r), int(c)) for r, c in zip(rows, cols) if dist[r, c] <= tol_s + 1e-9]
    n = len(pairs)
    precision = n / len(pred) if len(pred) else (math.nan if not len(ref) else 0.0)
    recall = n / len(ref) if len(ref) else (math.nan if not len(pred) else 0.0)
    if not len(ref) and not len(pred):
        f1 = math.nan
    else:
        f1 = 2 * n / (len(ref) + len(pred))
    errors = np.array([pred[c] - ref[r] for r, c in pairs])
    return Match(precision, recall, f1, pairs, errors)


# ----------------------------------------------------------------------------- AV-Align
AV_ALIGN_SR = 22050  # the reference reads audio with librosa.load's default rate
AV_ALIGN_N_FFT, AV_ALIGN_HOP, AV_ALIGN_MELS = 2048, 512, 128
AV_ALIGN_SIDE = 32  # flow on frames of at most 32 px: the trajectory's peaks, not its detail, matter


def reference_audio_onsets(audio: np.ndarray, sr: int) -> np.ndarray:
    """librosa.onset.onset_detect with its defaults, re-derived from its documentation.

    Envelope: mean over 128 mel bands of the rise of the log-power mel spectrogram (dB, 80 dB
    range) between consecutive 2048/512 frames, delayed by lag + n_fft // (2 hop) frames as
    librosa does for centred frames; normalised to [0, 1]; then librosa's peak picking.
    """
    x = resample(audio, sr, AV_ALIGN_SR)
    mel = mel_spectrogram(x, AV_ALIGN_SR, AV_ALIGN_N_FFT, AV_ALIGN_HOP, AV_ALIGN_MELS, 0.0, AV_ALIGN_SR / 2,
                          mel_scale="slaney", power=2.0)
    db = 10 * np.log10(np.maximum(mel.astype(np.float64), 1e-10))
    db = np.maximum(db, db.max() - 80.0)
    rise = np.maximum(db[1:] - db[:-1], 0.0).mean(axis=1)
    env = np.concatenate([np.zeros(1 + AV_ALIGN_N_FFT // (2 * AV_ALIGN_HOP)), rise])[: len(db)]
    env = env - env.min()
    if env.max() <= 0:
        return np.zeros(0)
    env /= env.max()
    frames_per_s = AV_ALIGN_SR / AV_ALIGN_HOP
    peaks = peak_pick(env, pre_max=int(0.03 * frames_per_s), post_max=1, pre_avg=int(0.10 * frames_per_s),
                      post_avg=int(0.10 * frames_per_s) + 1, delta=0.07, wait=int(0.03 * frames_per_s))
    return peaks * AV_ALIGN_HOP / AV_ALIGN_SR


def peak_pick(x: np.ndarray, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float,
              wait: int) -> np.ndarray:
    """librosa.util.peak_pick's rule: n is a peak if x[n] is the max of x[n-pre_max : n+post_max],
    x[n] >= mean(x[n-pre_avg : n+post_avg]) + delta, and n is more than `wait` after the last peak."""
    peaks, last = [], -np.inf
    for n in range(len(x)):
        window = x[max(0, n - pre_max): n + post_max]
        local = x[max(0, n - pre_avg): n + post_avg]
        if x[n] >= window.max() and x[n] >= local.mean() + delta and n - last > wait:
            peaks.append(n)
            last = n
    return np.array(peaks, dtype=np.float64)


def horn_schunck(frames: np.ndarray, alpha: float = 0.1, iters: int = 40) -> np.ndarray:
    """Mean optical-flow magnitude between consecutive grey frames (T, H, W) -> (T-1,).

    The reference uses OpenCV's Farneback flow, which is not a dependency here; Horn and
    Schunck's dense flow (1981) measures the same quantity, all frame pairs at once.
    """
    a, b = frames[:-1].astype(np.float64), frames[1:].astype(np.float64)
    mean = 0.5 * (a + b)
    # spatial gradients of the pair's mean; none along a side one pixel wide (a thin strip of video)
    iy, ix = (np.gradient(mean, axis=k) if mean.shape[k] > 1 else np.zeros_like(mean) for k in (1, 2))
    it = b - a
    den = alpha ** 2 + ix ** 2 + iy ** 2
    u, v = np.zeros_like(a), np.zeros_like(a)
    for _ in range(iters):
        ub, vb = neighbour_mean(u), neighbour_mean(v)
        t = (ix * ub + iy * vb + it) / den
        u, v = ub - ix * t, vb - iy * t
    return np.sqrt(u ** 2 + v ** 2).mean(axis=(1, 2))


HS_NEIGHBOURS = np.array([[[1, 2, 1], [2, 0, 2], [1, 2, 1]]], np.float64) / 12


def neighbour_mean(x: np.ndarray) -> np.ndarray:
    """Horn-Schunck's weighted mean of the 8 neighbours (1/6 edge, 1/12 corner), edges replicated."""
    return ndimage.correlate(x, HS_NEIGHBOURS, mode="nearest")


def reference_video_peaks(sig: AVSignal) -> np.ndarray:
    """Local maxima of the flow-magnitude trajectory, as times i / fps (the reference's form,
    whose first entry repeats the flow between frames 0 and 1)."""
    mags = horn_schunck(shrink(sig.frames, AV_ALIGN_SIDE))
    traj = np.concatenate([mags[:1], mags])
    i = np.arange(1, len(traj) - 1)
    peaks = i[(traj[i - 1] < traj[i]) & (traj[i] > traj[i + 1])]
    return peaks / sig.fps


def av_align(sig: AVSignal) -> float:
    """AV-Align IoU: audio peaks with a video peak strictly within one frame, over the union."""
    audio_peaks = reference_audio_onsets(sig.audio, sig.sample_rate)
    video_peaks = reference_video_peaks(sig)
    frame = 1.0 / sig.fps
    hits = sum(bool(np.any(np.abs(video_peaks - t) < frame)) for t in audio_peaks)
    union = len(audio_peaks) + len(video_peaks) - hits
    return hits / union if union else math.nan
