"""`shapes`: a synthetic dataset with the Talking Digits schema and no files.

A glyph is on screen while a tone whose pitch belongs to that glyph sounds. Each glyph
has its own fundamental (a harmonic tone with a short attack and release), and its own
drawing; size, position, brightness and tone loudness vary per event.
"""
from __future__ import annotations

import numpy as np

from .events import Asset, EventDataset, fade

# glyph -> fundamental frequency in Hz (all well under the 4 kHz Nyquist of 8 kHz audio,
# with three harmonics; spaced so neighbouring tones differ by at least 3 semitones)
GLYPHS = {
    "square": 220.0,
    "circle": 277.2,
    "triangle": 349.2,
    "cross": 440.0,
    "diamond": 554.4,
    "ring": 698.5,
    "bar": 880.0,
    "plus": 1108.7,
}


def glyph_mask(name: str, h: int, w: int, size: float, cy: float, cx: float) -> np.ndarray:
    """Binary-ish (anti-aliased) mask of a glyph of half-size `size` pixels centred at (cy, cx)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    dy, dx = (y - cy) / size, (x - cx) / size
    r = np.sqrt(dx ** 2 + dy ** 2)
    t = 0.12  # line thickness relative to size
    if name == "square":
        d = np.maximum(abs(dx), abs(dy)) - 1
    elif name == "circle":
        d = r - 1
    elif name == "triangle":
        d = np.maximum(dy - 0.8, np.maximum(-0.866 * dx - 0.5 * dy, 0.866 * dx - 0.5 * dy) - 0.5)
    elif name == "cross":
        d = np.minimum(abs(dx - dy), abs(dx + dy)) / 1.414 - t * 1.5
        d = np.maximum(d, np.maximum(abs(dx), abs(dy)) - 1)
    elif name == "diamond":
        d = abs(dx) + abs(dy) - 1
    elif name == "ring":
        d = abs(r - 0.8) - 0.2
    elif name == "bar":
        d = np.maximum(abs(dx) - 1, abs(dy) - 0.3)
    elif name == "plus":
        d = np.minimum(abs(dx), abs(dy)) - 0.25
        d = np.maximum(d, np.maximum(abs(dx), abs(dy)) - 1)
    else:
        raise ValueError(f"unknown glyph {name!r}")
    return np.clip(0.5 - d * size, 0.0, 1.0)  # ~1 pixel anti-aliasing


def tone(freq: float, n: int, sr: int, level: float) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / sr
    x = sum(a * np.sin(2 * np.pi * freq * k * t) for k, a in ((1, 1.0), (2, 0.5), (3, 0.25)) if freq * k < sr / 2)
    x = fade(x.astype(np.float32), int(0.01 * sr))
    return (level * x / np.abs(x).max()).astype(np.float32)


class Shapes(EventDataset):
    name = "shapes"
    vocab = tuple(GLYPHS)
    min_dur_s, max_dur_s = 0.25, 0.8

    def __init__(self, split: str = "train", seed: int = 0, spec=None, data_root=None, length: int = 1_000_000):
        super().__init__(split, seed, spec, length)

    def asset(self, label: str, rng: np.random.Generator) -> Asset:
        s = self.spec
        nf = int(rng.integers(round(self.min_dur_s * s.fps), round(self.max_dur_s * s.fps) + 1))
        side = min(s.height, s.width)
        size = side * rng.uniform(0.25, 0.38)
        cy = s.height / 2 + rng.uniform(-0.08, 0.08) * s.height
        cx = s.width / 2 + rng.uniform(-0.08, 0.08) * s.width
        mask = glyph_mask(label, s.height, s.width, size, cy, cx)
        if s.channels == 3:
            colour = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
        else:
            colour = np.array([rng.uniform(0.7, 1.0)], np.float32)
        image = (mask[..., None] * colour).astype(np.float32)
        sound = tone(GLYPHS[label], nf * s.samples_per_frame, s.sample_rate, float(rng.uniform(0.4, 0.8)))
        return Asset(label, image, sound, f"shapes:{label}")
