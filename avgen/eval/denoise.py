"""Held-out denoising error: how well a model predicts clean tokens at fixed noise levels.

    error[m][t] = mean over clips, tokens and channels of (x0_pred_m - x0_m)^2,
    x_t = (1 - t) x0 + t noise for both modalities at the same t,

on real clips with their prompts and their own timelines (the network's training inputs, without any
dropout). It is the training objective's x0 error (unweighted, unclamped), read per noise level and
per modality, on clips the model never trained on. Two uses:

- `avgen eval --dataset talking-digits --denoise-error --weights W [--split train]`: one model on one
  split; the same clips on the train split give the generalisation gap per noise level;
- training validation (`TrainConfig.val_every`): the same figures on the test split during a run,
  logged to metrics.jsonl (`val_x0_audio@0.6`, ...), so a run that starts to memorise its training
  recordings shows it while it trains.

The noise is one draw per clip, keyed by (seed, the clip's place in the batch) and shared by every
level, so figures at different levels, and of different models, are paired, and a clip's noise does
not depend on how many clips are measured or in what chunks.
"""
from __future__ import annotations

import numpy as np
import torch

from avgen.model.batch import clip_batch, sample_generator
from avgen.model.codec import AVCodec
from avgen.model.timeline import unknown_slot

LEVELS = (0.001, 0.03, 0.1, 0.3, 0.6, 0.9)
MEDIA = ("video", "audio")


def check_levels(levels) -> None:
    if not levels or any(not 0 < t <= 1 for t in levels):
        raise ValueError(f"noise levels must lie in (0, 1], got {list(levels)}")


@torch.no_grad()
def error_sums(model, codec, batch: dict, levels, seed: int, first: int = 0) -> dict[str, np.ndarray]:
    """{modality: (levels,)} summed per-clip x0 MSE over one batch whose clip i is clip `first + i` of
    the measurement (its noise is keyed by that number)."""
    device = next(model.parameters()).device
    timeline = bool(model.config.get("timeline_cond", False))
    part = {k: v.to(device) for k, v in batch.items()}
    x0 = codec.encode(part["frames"], part["audio"])
    gens = [sample_generator(seed, first + i) for i in range(x0["video"].shape[0])]
    noise = {m: torch.cat([torch.randn((1, *x0[m].shape[1:]), generator=g) for g in gens]).to(device) for m in MEDIA}
    sums = {m: np.zeros(len(levels)) for m in MEDIA}
    for i, level in enumerate(levels):
        t = torch.full((x0["video"].shape[0],), float(level), device=device)
        x_t = {m: (1 - level) * x0[m] + level * noise[m] for m in MEDIA}
        # a clip without a known timeline (-1: a folder clip whose events did not fit its caption) is given
        # the "unknown" slot, as training gives it
        unknown = torch.full_like(part["slots"], unknown_slot(model.config.max_events))
        extra = {"slots": torch.where(part["slots"] >= 0, part["slots"], unknown)} if timeline else {}
        pred = model(x_t["video"], x_t["audio"], t, t, part["ids"], part["mask"], **extra)
        for m in MEDIA:
            sums[m][i] = float((pred[m].float() - x0[m]).pow(2).mean(dim=(1, 2)).sum())
    return sums


def denoise_error(model, codec, batch: dict, levels=LEVELS, seed: int = 0, chunk: int = 64) -> dict[str, dict]:
    """{modality: {level: x0 MSE}} of `model` (an AVDiT) on one batch from `clip_batch`, on the model's
    device and dtype, in chunks of `chunk` clips."""
    check_levels(levels)
    n = batch["frames"].shape[0]
    return average((error_sums(model, codec, {k: v[start:start + chunk] for k, v in batch.items()}, levels, seed,
                               start) for start in range(0, n, chunk)), n, levels)


def dataset_denoise_error(model, ds, n: int, levels=LEVELS, seed: int = 0, first_index: int = 0,
                          chunk: int = 64) -> dict:
    """`denoise_error` on clips first_index .. first_index + n of a dataset (its events give the
    timelines), rendered `chunk` clips at a time."""
    if n < 1:
        raise ValueError(f"the denoising error needs at least one clip, got n={n}")
    check_levels(levels)
    codec = AVCodec.from_config(model.config).to(next(model.parameters()).device)

    def batch_at(start: int) -> dict:
        clips = [ds[first_index + i] for i in range(start, min(n, start + chunk))]
        return clip_batch(clips, model.config.vocab, model.config.max_events, codec.cfg.frames_per_token,
                          ds.parse_prompt)

    return average((error_sums(model, codec, batch_at(start), levels, seed, start) for start in range(0, n, chunk)),
                   n, levels)


def average(parts, n: int, levels) -> dict[str, dict]:
    """Summed errors of the parts of n clips -> {modality: {level: mean}}."""
    total = {m: np.zeros(len(levels)) for m in MEDIA}
    for sums in parts:
        for m in MEDIA:
            total[m] += sums[m]
    return {m: {float(level): float(total[m][i] / n) for i, level in enumerate(levels)} for m in MEDIA}


def flat(errors: dict, prefix: str = "x0") -> dict[str, float]:
    """{modality: {level: e}} -> {"x0_audio@0.3": e, ...} (metrics.jsonl keys)."""
    return {f"{prefix}_{m}@{level:g}": e for m, row in errors.items() for level, e in row.items()}


def format_table(errors: dict) -> str:
    levels = list(next(iter(errors.values())))
    lines = ["noise level   " + "  ".join(f"{m:>9}" for m in errors)]
    for level in levels:
        lines.append(f"{level:<11g}   " + "  ".join(f"{errors[m][level]:9.5f}" for m in errors))
    return "\n".join(lines)


__all__ = ["LEVELS", "dataset_denoise_error", "denoise_error", "error_sums", "flat", "format_table"]
