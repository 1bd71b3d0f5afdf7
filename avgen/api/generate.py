"""Weights -> clips: the one library function behind `avgen generate`, the studio, the evaluation
suite's generated clips and the curated seeds.

    pipe = load_pipeline("weights/avgen")
    clips = generate(pipe, GenerateSettings(prompt="3 1 4", seed=0))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from avgen.api.settings import GenerateSettings
from avgen.data.clip import Clip
from avgen.model.chunks import edit_timeline
from avgen.model.pipeline import AVGenPipeline, load_pipeline
from avgen.model.timeline import events_from_slots


@dataclass
class Edit:
    """Temporal inpainting: a clip (frames (T, H, W, C) in [0, 1] and audio (S,), on the model's clock)
    whose picture and sound are kept in the `keep` spans [(start_s, end_s), ...] and made anew, from the
    prompt, everywhere else (the model sees the kept spans as context; the clip keeps their own samples,
    the sound crossfaded over 10 ms where it meets the made part). The clip's length is its own (up to
    the model's), and its timeline is drawn into the spans it makes."""

    frames: np.ndarray
    audio: np.ndarray
    keep: list[tuple[float, float]]


def generate(pipe: AVGenPipeline, settings: GenerateSettings, audio=None, video=None,
             on_step: Callable[[int, int], None] | None = None, edit: Edit | None = None) -> list[Clip]:
    """Clips for `settings`; clip i uses seed `settings.seed + i` alone, so it does not depend on
    how many clips are made together. `audio` (S,) / `video` (T, H, W, C) make it A2V / V2A; `edit`
    keeps parts of a clip and makes the rest (see `Edit`). `on_step(done, total)` is called after every
    sampling step (a progress bar's feed)."""
    n = settings.check().num_clips
    prompt = pipe.vocabulary_for(settings.duration).parse(settings.prompt)  # read once, here, for every clip
    pipe.set_sampler(settings.sampler)
    generators = [torch.Generator("cpu").manual_seed(settings.seed + i) for i in range(n)]
    extra = {} if edit is None else edit_kwargs(pipe, edit, prompt, settings, generators)
    out = pipe([prompt] * n, generator=generators, audio=audio, video=video, **{**sampling_kwargs(settings), **extra},
               callback_on_step_end=None if on_step is None else _step_reporter(on_step, settings.steps))
    if edit is not None:  # the kept spans' own sound, not its re-synthesis
        spt = pipe.codec.cfg.frames_per_token * pipe.codec.spec.samples_per_frame
        kept = extra["context_mask"][0].numpy()
        out.audio = np.stack([splice(a, edit.audio, kept, spt, round(SPLICE_FADE_S * pipe.codec.spec.sample_rate))
                              for a in out.audio])
    clips = []
    for i in range(n):
        meta = {"seed": settings.seed + i, "mode": settings.mode}
        if out.timeline is not None:  # the plan as labelled events (none when unknown or the prompt is null)
            meta["timeline"] = events_from_slots(out.timeline[i], prompt.labels, pipe.transformer.config.token_seconds)
        if out.seams is not None:  # a long clip, made in windows: where each one's new part began
            meta["seams_s"] = out.seams[i]
        clips.append(Clip(out.frames[i].astype(np.float32), out.audio[i].astype(np.float32), out.fps,
                          out.sample_rate, prompt=prompt.text, meta=meta))
    return clips


def edit_kwargs(pipe: AVGenPipeline, edit: Edit, prompt, settings: GenerateSettings, generators) -> dict:
    """The pipeline-call arguments of an edit: the clip's tokens as context where kept, the prompt's
    events drawn into the rest (one timeline per clip, from its own generator)."""
    if settings.mode != "t2av":
        raise ValueError("an edit makes both picture and sound of the spans it does not keep: mode t2av only")
    spec = pipe.codec.spec
    seconds = len(edit.frames) / spec.fps
    if seconds > spec.duration + 1e-9:
        raise ValueError(f"an edit works on clips of up to the model's {spec.duration:g} s; this one lasts {seconds:g} s")
    tokens = pipe.codec.encode(torch.as_tensor(edit.frames, dtype=torch.float32)[None],
                               torch.as_tensor(edit.audio, dtype=torch.float32)[None])
    times = pipe.codec.token_times(tokens["video"].shape[1]).numpy()
    kept = np.zeros(len(times), bool)
    for lo, hi in edit.keep:
        kept |= (times >= lo) & (times < hi)
    if kept.all() or not kept.any():
        raise ValueError("the kept spans cover " + ("the whole clip: there is nothing to make" if kept.any() else
                                                    "none of the clip: give spans inside it, or generate without --edit"))
    n = len(generators)
    slots = [edit_timeline(pipe.transformer, prompt, ~kept, g) for g in generators]
    return {"duration_s": seconds, "context_latents": {m: t.expand(n, -1, -1) for m, t in tokens.items()},
            "context_mask": torch.as_tensor(kept)[None].expand(n, -1),
            "timeline": None if slots[0] is None else torch.cat(slots)}


SPLICE_FADE_S = 0.01  # the crossfade where an edit's kept sound meets the made one


def splice(made: np.ndarray, original: np.ndarray, kept_tokens: np.ndarray, samples_per_token: int,
           fade: int) -> np.ndarray:
    """The original sound where tokens are kept, the made one elsewhere, crossfaded over `fade` samples."""
    w = np.repeat(kept_tokens.astype(np.float32), samples_per_token)[:len(made)]
    if fade > 1:
        w = np.convolve(np.pad(w, fade, mode="edge"), np.ones(fade, np.float32) / fade, mode="same")[fade:-fade]
    return (w * original[:len(made)] + (1 - w) * made).astype(np.float32)


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


__all__ = ["Edit", "GenerateSettings", "edit_kwargs", "generate", "load_pipeline", "sampling_kwargs"]
