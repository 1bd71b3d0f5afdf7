"""Weights -> clips: the one library function behind `avgen generate`, the studio, the evaluation
suite's generated clips and the curated seeds.

    pipe = load_pipeline("weights/avgen")
    clips = generate(pipe, GenerateSettings(prompt="3 1 4", seed=0))
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from avgen.api.settings import GenerateSettings
from avgen.data.clip import Clip
from avgen.model.pipeline import AVGenPipeline, load_pipeline
from avgen.model.timeline import events_from_slots


def generate(pipe: AVGenPipeline, settings: GenerateSettings, audio=None, video=None,
             on_step: Callable[[int, int], None] | None = None) -> list[Clip]:
    """Clips for `settings`; clip i uses seed `settings.seed + i` alone, so it does not depend on
    how many clips are made together. `audio` (S,) / `video` (T, H, W, C) make it A2V / V2A.
    `on_step(done, total)` is called after every sampling step (a progress bar's feed)."""
    n = settings.check().num_clips
    prompt = pipe.vocabulary.parse(settings.prompt)  # read once, here, for every clip
    pipe.set_sampler(settings.sampler)
    generators = [torch.Generator("cpu").manual_seed(settings.seed + i) for i in range(n)]
    out = pipe([prompt] * n, generator=generators, audio=audio, video=video, **sampling_kwargs(settings),
               callback_on_step_end=None if on_step is None else _step_reporter(on_step, settings.steps))
    clips = []
    for i in range(n):
        meta = {"seed": settings.seed + i, "mode": settings.mode}
        if out.timeline is not None:  # the plan as labelled events (none when unknown or the prompt is null)
            meta["timeline"] = events_from_slots(out.timeline[i], prompt.labels, pipe.transformer.config.token_seconds)
        clips.append(Clip(out.frames[i].astype(np.float32), out.audio[i].astype(np.float32), out.fps,
                          out.sample_rate, prompt=prompt.text, meta=meta))
    return clips


def sampling_kwargs(settings: GenerateSettings) -> dict:
    """The pipeline-call arguments that `settings` decides (all but prompts, seeds and given modalities;
    the sampler is set with `pipe.set_sampler`)."""
    return dict(duration_s=settings.duration, num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale, audio_guidance_scale=settings.audio_guidance_scale,
                modality_scale=settings.modality_scale, guidance_interval=settings.guidance_interval,
                timeline="auto" if settings.timeline else None, postfilter=settings.postfilter)


def _step_reporter(on_step: Callable[[int, int], None], steps: int) -> Callable:
    """A step-end callback counting in the steps asked for (Heun runs ~2 scheduler steps per step)."""
    def report(pipe, i, t, tensors):
        on_step(max(1, round((i + 1) * steps / pipe.num_timesteps)), steps)
        return {}
    return report


__all__ = ["GenerateSettings", "generate", "load_pipeline", "sampling_kwargs"]
