"""Timelines: which prompt label is active at each media token.

A timeline is a (B, N) long tensor of slot ids on the token clock: 0 = no event at that token,
k + 1 = the k-th prompt label's event, `unknown_slot(max_events)` = not given (dropped in training,
A2V / V2A, or a caller without one). Built from a clip's ground-truth events for training, and drawn
from the data's layout prior (per-label event lengths, `events.layout`) for text-to-AV sampling, so
that counting and ordering events is no longer left to the network.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from avgen.data.events import layout


def unknown_slot(max_events: int) -> int:
    return max_events + 1


def slots_from_events(events: Sequence, num_tokens: int, token_seconds: float) -> np.ndarray:
    """Ground-truth events [(label, start_s, end_s), ...] in order -> (N,) slot ids (token centres)."""
    centres = (np.arange(num_tokens) + 0.5) * token_seconds
    slots = np.zeros(num_tokens, dtype=np.int64)
    for k, (_, start, end) in enumerate(events):
        slots[(centres >= start) & (centres < end)] = k + 1
    return slots


class LayoutPrior:
    """How long each label's events last (tokens -> how often seen in training); draws timelines."""

    def __init__(self, counts: dict[str, dict], min_gap: int):
        self.counts = {str(lab): {int(n): int(c) for n, c in hist.items()} for lab, hist in counts.items()}
        if not self.counts or any(not h or min(h) < 1 or min(h.values()) < 1 for h in self.counts.values()):
            raise ValueError("the layout prior needs at least one positive event length per label")
        self.min_gap = int(min_gap)

    @classmethod
    def measure(cls, clips, frames_per_token: int, min_gap_frames: int) -> "LayoutPrior":
        """Event lengths of ground-truth clips, in tokens."""
        counts: dict[str, dict[int, int]] = {}
        for c in clips:
            for label, start, end in c.truth():
                n = max(1, round((end - start) * c.fps / frames_per_token))
                counts.setdefault(label, {}).setdefault(n, 0)
                counts[label][n] += 1
        return cls(counts, -(-min_gap_frames // frames_per_token))

    def draw(self, labels: Sequence[str], num_tokens: int, rng: np.random.Generator,
             tries: int = 100) -> np.ndarray:
        pooled: dict[int, int] = {}  # a label the data never showed: lengths pooled over every label
        for hist in self.counts.values():
            for n, c in hist.items():
                pooled[n] = pooled.get(n, 0) + c
        room = num_tokens - (len(labels) - 1) * self.min_gap  # tokens left for the events themselves
        if room < len(labels):
            raise ValueError(f"{len(labels)} events do not fit a clip of {num_tokens} tokens")
        for attempt in range(tries + 1):
            n = []
            for lab in labels:
                lengths, weights = zip(*sorted(self.counts.get(lab, pooled).items()))
                n.append(int(rng.choice(lengths, p=np.asarray(weights) / sum(weights))))
            if attempt == tries and sum(n) > room:  # a clip shorter than the data's: shrink the last draw to fit
                n = [max(1, int(v * room / sum(n))) for v in n]
                while sum(n) > room:  # the 1-token floor may overshoot: trim the longest
                    n[int(np.argmax(n))] -= 1
            onsets = layout(n, num_tokens, self.min_gap, rng)
            if onsets is not None:
                slots = np.zeros(num_tokens, dtype=np.int64)
                for k, (on, length) in enumerate(zip(onsets, n)):
                    slots[on:on + length] = k + 1
                return slots
        raise AssertionError("unreachable: the shrunk events fit")

    def to_dict(self) -> dict:
        return {"counts": {lab: {str(n): c for n, c in h.items()} for lab, h in self.counts.items()},
                "min_gap": self.min_gap}

    @classmethod
    def from_dict(cls, d: dict) -> "LayoutPrior":
        return cls(d["counts"], d["min_gap"])


def events_from_slots(slots: np.ndarray, labels: Sequence[str], token_seconds: float) -> list[tuple[str, float, float]]:
    """(N,) slot ids -> the planned events [(label, start_s, end_s), ...] in slot order (unknown and
    silent tokens are not events); the inverse of `slots_from_events` on the token grid."""
    slots = np.asarray(slots)
    events = []
    for k, label in enumerate(labels):
        where = np.flatnonzero(slots == k + 1)
        if len(where):
            events.append((str(label), float(where[0] * token_seconds), float((where[-1] + 1) * token_seconds)))
    return events


def as_tensor(slots: Sequence[np.ndarray], device=None) -> torch.Tensor:
    return torch.as_tensor(np.stack(slots), dtype=torch.long, device=device)
