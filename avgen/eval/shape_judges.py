"""Judges for the `shapes` dataset: which glyph is on screen, which tone sounds. Nothing trained.

The shapes generator is known exactly (`avgen.data.shapes`), so each judge compares what it sees
with the generator's own renderings instead of learning them:
  glyph: the event's mean frame (the digit judge's `image_input`) against a bank of every glyph
         drawn at a grid of the generator's sizes and positions; zero-mean normalised correlation,
         best placement per glyph;
  tone:  the event's magnitude spectrum against each glyph's harmonic tone rendered by the
         generator; cosine similarity of smoothed spectra (a tone an octave away shares at most
         one partial, so octaves are not confused).
They speak the interface of `avgen.eval.judges.Judge` (a call on a list of inputs returns a
`Reading`, with `cfg.labels`), plus `prepare`, so the suite reads shapes clips as it reads digits:
glyph/tone accuracy lands in the `video_digit_*` / `audio_digit_*` fields.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avgen.data.shapes import GLYPHS, glyph_mask, tone
from avgen.eval.judges import IMAGE_SIDE, Reading, event_frames, image_input
from avgen.signal.onsets import Detected, resample

LABELS = tuple(GLYPHS)
SHARPNESS = 20.0  # softmax temperature over similarities in [-1, 1]: probabilities for the record


@dataclass(frozen=True)
class ShapeJudgeConfig:
    labels: tuple[str, ...] = LABELS
    sizes: tuple[float, ...] = (0.25, 0.285, 0.32, 0.35, 0.38)  # half-size / side, the generator's range
    offsets: tuple[float, ...] = (-0.08, -0.04, 0.0, 0.04, 0.08)  # centre offset / side, likewise
    sample_rate: int = 8000
    n_fft: int = 4096
    max_hz: float = 3800.0
    smooth_hz: float = 12.0  # spectra are blurred this much: generated tones wobble a little

    @property
    def embed_dim(self) -> int:
        return len(self.labels)


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(SHARPNESS * (x - x.max(axis=1, keepdims=True)))
    return z / z.sum(axis=1, keepdims=True)


def reading(scores: np.ndarray, labels: tuple[str, ...]) -> Reading:
    """(N, K) similarities -> labels, probabilities, and the similarities as the embedding."""
    if not len(scores):
        return Reading([], np.zeros((0, len(labels))), np.zeros((0, len(labels))))
    return Reading([labels[i] for i in scores.argmax(1)], softmax(scores), scores.astype(np.float32))


def zero_mean_unit(x: np.ndarray) -> np.ndarray:
    """Rows minus their mean, scaled to unit norm (a flat row stays zero)."""
    x = x - x.mean(axis=-1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


class GlyphJudge:
    """Which glyph an event's frames show (input: `image_input` of its frames, 32 x 32)."""

    def __init__(self, cfg: ShapeJudgeConfig = ShapeJudgeConfig()):
        self.cfg = cfg
        side = IMAGE_SIDE
        bank = [[image_input(glyph_mask(g, side, side, side * s, side / 2 + dy * side, side / 2 + dx * side)[None])
                 for s in cfg.sizes for dy in cfg.offsets for dx in cfg.offsets] for g in cfg.labels]
        self.bank = zero_mean_unit(np.asarray(bank, np.float32).reshape(len(cfg.labels), -1, side * side))  # (K, V, P)

    @staticmethod
    def prepare(sig, ev: Detected) -> np.ndarray:
        return image_input(event_frames(sig.frames, sig.frame_times, sig.fps, ev))

    def __call__(self, inputs: list[np.ndarray]) -> Reading:
        if not inputs:
            return reading(np.zeros((0, len(self.cfg.labels))), self.cfg.labels)
        x = zero_mean_unit(np.stack([np.asarray(i, np.float32).reshape(-1) for i in inputs]))  # (N, P)
        scores = np.einsum("np,kvp->nkv", x, self.bank).max(axis=2)  # best placement per glyph: (N, K)
        return reading(scores, self.cfg.labels)


class ToneJudge:
    """Which glyph's tone an event's sound is (input: the event's samples at the clip's rate)."""

    def __init__(self, cfg: ShapeJudgeConfig = ShapeJudgeConfig()):
        self.cfg = cfg
        sr = cfg.sample_rate
        self.bank = np.stack([self.spectrum(tone(GLYPHS[g], int(0.5 * sr), sr, 1.0)) for g in cfg.labels])  # (K, F)

    def prepare(self, sig, ev: Detected) -> np.ndarray:
        if sig.sample_rate != self.cfg.sample_rate:
            return self.prepare_at(resample(sig.audio, sig.sample_rate, self.cfg.sample_rate), ev)
        return self.prepare_at(sig.audio, ev)

    def prepare_at(self, audio: np.ndarray, ev: Detected) -> np.ndarray:
        sr = self.cfg.sample_rate
        a, b = max(0, int(ev.onset_s * sr)), min(len(audio), int(ev.end_s * sr))
        return np.asarray(audio[a:max(b, a + 1)], np.float32)

    def spectrum(self, x: np.ndarray) -> np.ndarray:
        """Unit-norm, smoothed magnitude spectrum up to max_hz (zero for silence)."""
        c = self.cfg
        x = np.asarray(x, np.float64)[: c.n_fft]
        if len(x) < 2 or not np.any(x):
            return np.zeros(int(c.max_hz * c.n_fft / c.sample_rate), np.float32)
        mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=c.n_fft))[: int(c.max_hz * c.n_fft / c.sample_rate)]
        width = max(1, int(round(c.smooth_hz * c.n_fft / c.sample_rate)))
        mag = np.convolve(mag, np.hanning(2 * width + 1), mode="same")
        return (mag / max(np.linalg.norm(mag), 1e-12)).astype(np.float32)

    def __call__(self, inputs: list[np.ndarray]) -> Reading:
        if not inputs:
            return reading(np.zeros((0, len(self.cfg.labels))), self.cfg.labels)
        scores = np.stack([self.spectrum(x) for x in inputs]) @ self.bank.T  # cosine similarity: (N, K)
        return reading(scores, self.cfg.labels)


@dataclass
class ShapeJudges:
    """Same fields as `Judges`: `image` reads the picture, `speech` the sound."""

    image: GlyphJudge
    speech: ToneJudge

    @classmethod
    def build(cls, sample_rate: int = 8000) -> "ShapeJudges":
        cfg = ShapeJudgeConfig(sample_rate=sample_rate)
        return cls(GlyphJudge(cfg), ToneJudge(cfg))
