"""Shared event layout: both synthetic datasets (Talking Digits, shapes) draw per-event
assets (an image and a sound) and this one code path places them on the clip's clock.

Rules (the dataset contract):
- 1 to `max_events` events; each onset lies on the video frame grid;
- each event lasts a whole number of frames, so the picture and the sound start and end
  on the same frame boundary;
- consecutive events are separated by at least `min_gap_s` of silence and blank frames;
- a draw whose assets do not fit the clip is redrawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .clip import Clip, ClipSpec, Event
from .prompt import Vocabulary

SPLIT_CODE = {"train": 0, "test": 1}


@dataclass
class Asset:
    label: str
    image: np.ndarray  # (H, W, C) float32 in [0, 1]
    sound: np.ndarray  # (n_frames * samples_per_frame,) float32
    source: str = ""  # where it came from, for provenance


def fade(x: np.ndarray, n: int) -> np.ndarray:
    """Raised-cosine fade in and out over n samples (no clicks at event edges)."""
    n = min(n, len(x) // 2)
    if n <= 0:
        return x
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n, dtype=np.float32))
    x = x.copy()
    x[:n] *= ramp
    x[-n:] *= ramp[::-1]
    return x


def fit_to_frames(sound: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """Extend a sound with silence to a whole number of video frames (at least one)."""
    spf = spec.samples_per_frame
    n = max(1, math.ceil(len(sound) / spf)) * spf
    return np.pad(sound, (0, n - len(sound))).astype(np.float32)


def layout(n_frames: list[int], total: int, min_gap: int, rng: np.random.Generator) -> list[int] | None:
    """Random onsets (in frames) for events of the given lengths, or None if they cannot fit.

    The free frames are split at random between the lead-in, the gaps and the tail
    (uniform over compositions), after reserving `min_gap` frames between events.
    """
    k = len(n_frames)
    slack = total - sum(n_frames) - (k - 1) * min_gap
    if slack < 0:
        return None
    cuts = np.sort(rng.integers(0, slack + 1, size=k))  # k cut points in [0, slack]
    extra = np.diff(np.concatenate([[0], cuts]))  # lead-in and extra gaps, sum <= slack
    onsets, t = [], 0
    for i, n in enumerate(n_frames):
        t += int(extra[i]) + (min_gap if i else 0)
        onsets.append(t)
        t += n
    return onsets


def compose(assets: list[Asset], onsets: list[int], spec: ClipSpec, meta: dict | None = None) -> Clip:
    frames = np.zeros((spec.num_frames, spec.height, spec.width, spec.channels), np.float32)
    audio = np.zeros(spec.num_samples, np.float32)
    spf = spec.samples_per_frame
    events = []
    for a, f0 in zip(assets, onsets):
        nf = len(a.sound) // spf
        frames[f0: f0 + nf] = a.image
        audio[f0 * spf: f0 * spf + len(a.sound)] = a.sound
        events.append(Event(a.label, f0 / spec.fps, (f0 + nf) / spec.fps))
    meta = dict(meta or {})
    meta["sources"] = [a.source for a in assets]
    return Clip(frames, audio, spec.fps, spec.sample_rate, events, " ".join(a.label for a in assets), meta)


class EventDataset:
    """Base for datasets made of labelled events. Subclasses define `vocab` and `asset()`.

    A clip is a pure function of (seed, split, index): same seed, same clips, on any
    machine and in any order, so training can resume and shard without state.
    """

    name = "events"
    vocab: tuple[str, ...] = ()
    max_events = 3
    min_gap_s = 0.15
    max_redraws = 200

    def __init__(self, split: str = "train", seed: int = 0, spec: ClipSpec | None = None, length: int = 1_000_000):
        if split not in SPLIT_CODE:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split, self.seed, self.spec, self.length = split, int(seed), spec or ClipSpec(), int(length)
        self.min_gap_frames = math.ceil(self.min_gap_s * self.spec.fps - 1e-9)

    # -- to override
    def asset(self, label: str, rng: np.random.Generator) -> Asset:
        raise NotImplementedError

    # -- the public API
    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Clip:
        return self.clip(index)

    def rng(self, index: int, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_CODE[self.split], int(index), salt])

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.vocab, self.max_events)

    def parse_prompt(self, prompt: str) -> list[str]:
        """A prompt's labels, read by the one prompt rule (`avgen.data.prompt`); PromptError otherwise."""
        return list(self.vocabulary.parse(prompt).labels)

    def random_labels(self, rng: np.random.Generator) -> list[str]:
        k = int(rng.integers(1, self.max_events + 1))
        return [self.vocab[i] for i in rng.integers(0, len(self.vocab), size=k)]

    def clip(self, index: int, labels: list[str] | str | None = None) -> Clip:
        """Clip `index` of this split; with `labels`, the same draw but for that prompt."""
        rng = self.rng(index)
        if isinstance(labels, str):
            labels = self.parse_prompt(labels)
        for attempt in range(self.max_redraws):
            chosen = list(labels) if labels is not None else self.random_labels(rng)
            assets = [self.asset(lab, rng) for lab in chosen]
            onsets = layout([len(a.sound) // self.spec.samples_per_frame for a in assets],
                            self.spec.num_frames, self.min_gap_frames, rng)
            if onsets is not None:
                meta = {"dataset": self.name, "split": self.split, "seed": self.seed, "index": int(index),
                        "redraws": attempt}
                return compose(assets, onsets, self.spec, meta)
        raise ValueError(f"could not fit {labels or 'a random draw'} into {self.spec.duration} s "
                         f"after {self.max_redraws} draws")
