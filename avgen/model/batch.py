"""Real clips -> the network's inputs, and the per-sample random streams: the batch building that
training and evaluation share (both sit above the model; neither imports the other).

Randomness (EDM2's rule): sample g of a run draws its noise, noise levels and dropouts from its own
generator, seeded by (run seed, g) through `seed64`, never from global RNG state, so what a sample
sees does not depend on batch size, process count or interruptions.
"""
from __future__ import annotations

import numpy as np
import torch

from avgen.model.objective import encode_prompts
from avgen.model.timeline import slots_from_events


def seed64(*keys: int) -> int:
    """A 64-bit seed from integer keys; SeedSequence decorrelates neighbouring keys."""
    hi, lo = np.random.SeedSequence(list(keys)).generate_state(2, np.uint32)
    return (int(hi) << 32) | int(lo)


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of global sample `index`."""
    return torch.Generator().manual_seed(seed64(seed, index))


def clip_slots(clips, frames_per_token: int) -> torch.Tensor:
    """(b, N) timeline slots from each clip's ground-truth events; -1 everywhere for a clip without them."""
    rows = []
    for c in clips:
        n = c.num_frames // frames_per_token
        rows.append(slots_from_events(c.truth(), n, frames_per_token / c.fps) if c.events
                    else np.full(n, -1, dtype=np.int64))
    return torch.from_numpy(np.stack(rows))


def clip_batch(clips, vocab, max_events: int, frames_per_token: int, parse_prompt) -> dict:
    """Real clips -> the network's inputs: frames, audio, prompt ids / mask, timeline slots."""
    frames = torch.from_numpy(np.stack([c.frames for c in clips]))
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))
    ids, mask = encode_prompts([parse_prompt(c.prompt) for c in clips], vocab, max_events)
    return {"frames": frames, "audio": audio, "ids": ids, "mask": mask, "slots": clip_slots(clips, frames_per_token)}


__all__ = ["clip_batch", "clip_slots", "sample_generator", "seed64"]
