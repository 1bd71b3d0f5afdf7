"""Clips a model makes for the evaluation suite (`avgen eval --generate N`): generated with the library's
own `generate`, written to mp4 and returned as suite items with what they are scored against."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from avgen.api.generate import generate
from avgen.api.settings import GenerateSettings
from avgen.data import make_dataset
from avgen.data.io import write_mp4
from avgen.eval.analysis import Item, Truth
from avgen.model.pipeline import AVGenPipeline


def generated_items(pipe: AVGenPipeline, settings: GenerateSettings, n: int, out_dir: Path,
                    dataset: str = "talking-digits", data_root=None, prompt: bool = True) -> list[Item]:
    """n clips from `pipe` at `settings` (its seed s: clip k uses seed s + k), as mp4 files, with the
    prompts they are scored against.

    t2av: clip k uses prompt k of the test split's random prompt stream (seeded by s). Without a prompt
    (`prompt=False`) the clips are unconditional and are scored for what needs none: whether picture and
    sound agree with each other, sync, and event counts.
    a2v / v2a: clip k is made from real test clip k's audio (a2v) or frames (v2a), held clean, with its
    prompt (or the null prompt when `prompt=False`: the given modality alone must say which digits); it
    is scored against that real clip's prompt, so the generated modality's accuracy says whether it
    follows what it was given.
    """
    base = settings.replace(num_clips=1).check()
    mode, seed = base.mode, base.seed
    ds = make_dataset(dataset, split="test", seed=seed, data_root=data_root,
                      spec=pipe.codec.spec if mode != "t2av" else None)
    rng = np.random.default_rng([seed, 2])
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(n):
        given = {}
        if mode == "t2av":
            truth = " ".join(long_labels(ds, rng, pipe.vocabulary_for(base.duration).max_events))
        else:
            real = ds[k]
            truth = real.prompt
            given = {"audio": real.audio} if mode == "a2v" else {"video": real.frames}
        clip = generate(pipe, base.replace(prompt=truth if prompt else "", seed=seed + k), **given)[0]
        # ground truth for the *_gt onset scores: the real clip's events (A2V / V2A), or the plan a timeline
        # model drew (text-to-AV), which says whether the plan was followed
        plan = [start for _, start, _ in (real.truth() if given else clip.meta.get("timeline", []))]
        scored = truth if (prompt or given) else ""  # an unconditional clip has no prompt to be scored against
        items.append(Item(write_mp4(clip, out_dir / f"{mode}_{k:05d}.mp4"), scored, Truth(plan, plan) if plan else None,
                          clip.meta.get("seams_s")))
    return items


def long_labels(ds, rng: np.random.Generator, capacity: int) -> list[str]:
    """The test split's prompt stream; for a clip longer than the model's (`capacity` labels above the
    data's own), 1 up to `capacity` labels, drawn uniformly, each uniform over the vocabulary."""
    if capacity <= ds.max_events:
        return ds.random_labels(rng)
    k = int(rng.integers(1, capacity + 1))
    return [ds.vocab[i] for i in rng.integers(0, len(ds.vocab), size=k)]


__all__ = ["generated_items", "long_labels"]
