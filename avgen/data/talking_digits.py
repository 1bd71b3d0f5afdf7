"""Talking Digits: an MNIST digit is on screen exactly while a voice (FSDD) says it.

Trimming rule (documented in the README, tested in tests/test_data.py): FSDD files carry
quiet lead-in and tails, so an event is the *voiced part* of a recording:
  1. pre-emphasise the signal, y[n] = x[n] - 0.97 x[n-1];
  2. compute RMS over 10 ms frames (hop 10 ms);
  3. the voice starts at the first frame whose RMS reaches -20 dB of the file's loudest
     frame and ends at the end of the last such frame;
  4. the segment is cut from the *original* signal from that start, extended to a whole
     number of video frames (never cut short), faded over 5 ms at both ends and
     peak-normalised to 0.8.

Augmentation (training only, off by default; `TrainConfig.augment_speed` / `augment_shift_px`): the
train split has 2,700 recordings and 8,000 digit images, and a model trained long enough memorises
the recordings (`avgen eval --denoise-error` on train against test clips; docs/experiments.md). `augment_speed=a` plays each event's voiced segment at a speed drawn log-uniformly in
[1/(1+a), 1+a] (tempo and pitch together, as speech recognisers' speed perturbation does), so the
event lasts 1/speed as long; `augment_shift_px=s` moves each digit image by up to s pixels each way.
The draws come after a clip's own, so with both at 0 every clip is what it was.
"""
from __future__ import annotations

import functools
from math import gcd
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.signal import resample_poly

from .clip import ClipSpec
from .events import Asset, EventDataset, fade, fit_to_frames
from .sources import (Recording, SourceError, fsdd_split, list_fsdd, mnist_split_indices, read_mnist, read_wav,
                      resolve_data_root)

DIGITS = tuple(str(d) for d in range(10))
TRIM_DB = -20.0
TRIM_WIN_S = 0.010
PEAK = 0.8
FADE_S = 0.005


def voiced_span(x: np.ndarray, sr: int, db: float = TRIM_DB, win_s: float = TRIM_WIN_S) -> tuple[int, int]:
    """[start, end) sample indices of the voiced part of a recording (see module docstring)."""
    y = np.append(x[:1], x[1:] - 0.97 * x[:-1])
    w = max(1, int(round(win_s * sr)))
    n = len(y) // w
    if n == 0:
        return 0, len(x)
    rms = np.sqrt(np.mean(y[: n * w].reshape(n, w) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) >= db)
    return int(loud[0] * w), int(min(len(x), (loud[-1] + 1) * w))


def resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return x
    g = gcd(sr, target)
    return resample_poly(x, target // g, sr // g).astype(np.float32)


def voiced_segment(x: np.ndarray, sr: int, spec: ClipSpec) -> np.ndarray:
    x = resample(x, sr, spec.sample_rate)
    a, b = voiced_span(x, spec.sample_rate)
    n = fit_to_frames(x[a:b], spec).size  # whole frames: continue into the file's own tail, then silence
    seg = np.pad(x[a: a + n], (0, max(0, a + n - len(x))))
    seg = fade(seg.astype(np.float32), int(FADE_S * spec.sample_rate))
    peak = float(np.abs(seg).max())
    return (seg * (PEAK / peak) if peak > 0 else seg).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _load_sources(root: str, split: str, spec: ClipSpec):
    """Read and trim every recording of the split once; ~1-2 s, then clips are array copies."""
    root_p = Path(root)
    recs = [r for r in list_fsdd(root_p) if fsdd_split(r) == split]
    by_digit: dict[int, list[tuple[Recording, np.ndarray]]] = {d: [] for d in range(10)}
    for r in recs:
        x, sr = read_wav(r.path)
        by_digit[r.digit].append((r, voiced_segment(x, sr, spec)))
    missing = [d for d, v in by_digit.items() if not v]
    if missing:
        raise SourceError(f"{root_p / 'fsdd' / 'recordings'} has no {split} recordings of digit(s) {missing}")
    images, labels = read_mnist(root_p)
    idx = mnist_split_indices(len(labels), split)
    imgs_by_digit = {d: idx[labels[idx] == d] for d in range(10)}
    return by_digit, images, imgs_by_digit


def place_digit(img28: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """28x28 uint8 digit -> centred (H, W, C) float frame (resized if the frame is not 32x32)."""
    img = img28.astype(np.float32) / 255.0
    side = min(spec.height, spec.width) * 28 // 32
    if side != 28:
        img = np.asarray(Image.fromarray(img28).resize((side, side), Image.BILINEAR), np.float32) / 255.0
    frame = np.zeros((spec.height, spec.width), np.float32)
    top, left = (spec.height - side) // 2, (spec.width - side) // 2
    frame[top: top + side, left: left + side] = img
    return np.repeat(frame[..., None], spec.channels, axis=2)


class TalkingDigits(EventDataset):
    name = "talking-digits"
    vocab = DIGITS

    def __init__(self, split: str = "train", seed: int = 0, spec: ClipSpec | None = None,
                 data_root=None, length: int = 1_000_000, augment_speed: float = 0.0, augment_shift_px: int = 0):
        super().__init__(split, seed, spec, length)
        if not (0 <= augment_speed <= 1 and 0 <= augment_shift_px <= min(self.spec.height, self.spec.width) // 4):
            raise ValueError(f"augment_speed must lie in [0, 1] and augment_shift_px in [0, a quarter of the frame], "
                             f"got {augment_speed} and {augment_shift_px}")
        self.augment_speed, self.augment_shift_px = float(augment_speed), int(augment_shift_px)
        self.root = resolve_data_root(data_root)
        self.sounds, self.images, self.image_ids = _load_sources(str(self.root), split, self.spec)

    def asset(self, label: str, rng: np.random.Generator) -> Asset:
        d = int(label)
        rec, sound = self.sounds[d][int(rng.integers(len(self.sounds[d])))]
        img_id = int(self.image_ids[d][int(rng.integers(len(self.image_ids[d])))])
        image, source = place_digit(self.images[img_id], self.spec), f"fsdd:{rec.path.name} mnist:{img_id}"
        if self.augment_speed > 0:
            speed = float(np.exp(rng.uniform(-1, 1) * np.log1p(self.augment_speed)))
            sound, source = change_speed(sound, speed, self.spec), f"{source} speed:{speed:.3f}"
        if self.augment_shift_px > 0:
            dy, dx = (int(v) for v in rng.integers(-self.augment_shift_px, self.augment_shift_px + 1, size=2))
            image, source = shift_image(image, dy, dx), f"{source} shift:{dy},{dx}"
        return Asset(label, image, sound, source)


def change_speed(sound: np.ndarray, speed: float, spec: ClipSpec) -> np.ndarray:
    """A segment played `speed` times as fast (linear interpolation: tempo and pitch together), then
    refitted as a voiced segment is: whole frames, 5-ms fades, peak 0.8."""
    n = max(2, int(round(len(sound) / speed)))
    played = np.interp(np.arange(n) * speed, np.arange(len(sound)), sound).astype(np.float32)
    seg = fade(fit_to_frames(played, spec), int(FADE_S * spec.sample_rate))
    peak = float(np.abs(seg).max())
    return (seg * (PEAK / peak) if peak > 0 else seg).astype(np.float32)


def shift_image(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(H, W, C) moved dy rows down and dx columns right; what enters the frame is black."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    out[max(0, dy): h + min(0, dy), max(0, dx): w + min(0, dx)] = \
        image[max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
    return out
