"""Timelines: which prompt label is active at each media token (work in progress, branch `timeline`).

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
    """Per-label event lengths (in tokens) seen in training; draws a timeline for a label sequence."""

    def __init__(self, lengths: dict[str, list[int]], min_gap: int):
        if not lengths or any(not v or min(v) < 1 for v in lengths.values()):
            raise ValueError("the layout prior needs at least one positive event length per label")
        self.lengths, self.min_gap = {k: [int(n) for n in v] for k, v in lengths.items()}, int(min_gap)

    def draw(self, labels: Sequence[str], num_tokens: int, rng: np.random.Generator,
             tries: int = 100) -> np.ndarray:
        unknown = sorted(set(labels) - set(self.lengths))
        if unknown:
            raise ValueError(f"no event lengths for labels {unknown}")
        for _ in range(tries):
            n = [int(rng.choice(self.lengths[lab])) for lab in labels]
            onsets = layout(n, num_tokens, self.min_gap, rng)
            if onsets is not None:
                slots = np.zeros(num_tokens, dtype=np.int64)
                for k, (on, length) in enumerate(zip(onsets, n)):
                    slots[on:on + length] = k + 1
                return slots
        raise ValueError(f"{len(labels)} events do not fit {num_tokens} tokens")

    def to_dict(self) -> dict:
        return {"lengths": self.lengths, "min_gap": self.min_gap}

    @classmethod
    def from_dict(cls, d: dict) -> "LayoutPrior":
        return cls(d["lengths"], d["min_gap"])


def as_tensor(slots: Sequence[np.ndarray], device=None) -> torch.Tensor:
    return torch.as_tensor(np.stack(slots), dtype=torch.long, device=device)
