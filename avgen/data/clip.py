"""The clip: the one data structure every part of avgen passes around.

Both modalities are stored time-first on one clock:
  frames: (T, H, W, C) float32 in [0, 1], frame t covers [t/fps, (t+1)/fps)
  audio:  (S,)         float32 in [-1, 1], mono, sample s is at s/sample_rate
Ground truth, when a dataset knows it, is a list of `Event(label, start_s, end_s)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, asdict

import numpy as np


@dataclass(frozen=True)
class ClipSpec:
    """Shape of a clip: what the data produces and the model consumes."""

    duration: float = 3.0
    height: int = 32
    width: int = 32
    channels: int = 1  # 1 = grey, 3 = RGB
    fps: int = 16
    sample_rate: int = 8000

    def __post_init__(self):
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        for name in ("height", "width", "fps", "sample_rate"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.sample_rate % self.fps:
            raise ValueError(f"sample_rate ({self.sample_rate}) must be a multiple of fps ({self.fps}) "
                             "so that both modalities share one frame grid")

    @property
    def num_frames(self) -> int:
        return int(round(self.duration * self.fps))

    @property
    def num_samples(self) -> int:
        return self.num_frames * self.samples_per_frame

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Event:
    """One thing that is seen and heard at once: `label` from `start_s` to `end_s`."""

    label: str
    start_s: float
    end_s: float

    def as_tuple(self) -> tuple[str, float, float]:
        return (self.label, self.start_s, self.end_s)


@dataclass
class Clip:
    frames: np.ndarray  # (T, H, W, C) float32 in [0, 1]
    audio: np.ndarray  # (S,) float32 in [-1, 1]
    fps: int
    sample_rate: int
    events: list[Event] = field(default_factory=list)
    prompt: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.frames.shape[0] / self.fps

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def truth(self) -> list[tuple[str, float, float]]:
        """Ground truth as `(label, start_s, end_s)` tuples."""
        return [e.as_tuple() for e in self.events]

    def check(self) -> "Clip":
        """Validate the layout; returns self so it can be chained."""
        if self.frames.ndim != 4:
            raise ValueError(f"frames must be (T, H, W, C), got shape {self.frames.shape}")
        if self.audio.ndim != 1:
            raise ValueError(f"audio must be mono (S,), got shape {self.audio.shape}")
        return self


def frame_grid(t_s: float, fps: int) -> float:
    """Snap a time to the nearest video frame boundary."""
    return round(t_s * fps) / fps
