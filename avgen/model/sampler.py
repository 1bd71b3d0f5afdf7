"""The sampler: a function of (network, noise, schedule, guidance) that integrates the flow ODE
(EDM2's split: the network knows nothing about noise; the pipeline only checks inputs and decodes).

Guidance, per modality m, in x0 space (the same as velocity space, since v = (x_t - x0) / t is
affine in x0 with coefficients summing to one):
    x0_m = x0_cond + (g_m - 1) (x0_cond - x0_uncond) + (s_m - 1) (x0_cond - x0_nocross)
g = prompt guidance (1.0 = off), s = modality guidance (LTX-2's convention, 1.0 = off): x0_nocross is
the conditional pass with the cross-modal path closed, so s > 1 pushes each modality towards what it
takes from the other. All passes of a step run as ONE batched forward.

Work that does not change across steps runs once per call: the prompt stream's keys and values and
every step's AdaLN outputs (`Conditioning`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from avgen.model.conditioning import Conditioning
from avgen.model.config import SAMPLER_NAMES
from avgen.model.device import autocast
from avgen.model.objective import x0_to_velocity
from avgen.model.samplers import FlowMatchHeunScheduler
from avgen.model.transformer import AVDiT, MEDIA, Modulation

# Solvers that integrate the flow-matching ODE; each modality gets its own instance because
# flow-matching schedulers keep a step counter (and multistep ones a history).
SAMPLERS: dict[str, Callable[[], object]] = {
    "euler": lambda: FlowMatchEulerDiscreteScheduler(),
    "heun": lambda: FlowMatchHeunScheduler(),  # 2nd order: 2N - 2 passes for N steps (see samplers.py)
    "dpm++": lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                 algorithm_type="dpmsolver++", solver_order=2),
    # the distilled student's Euler steps over its own levels (`schedule(..., sigmas=)`; see student.py)
    "fast": lambda: FlowMatchEulerDiscreteScheduler(),
}
assert tuple(SAMPLERS) == SAMPLER_NAMES, "config.SAMPLER_NAMES lists the samplers built here"
TABLE_ROWS = 256  # rows of AdaLN outputs built at once (steps x [cond | uncond] x batch): ~20 MB for AVDiT-S


def make_scheduler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]()


@dataclass(frozen=True)
class Guidance:
    """Per-modality guidance scales (1.0 = that guidance is off), and the noise levels where prompt
    guidance acts: `interval` = (lo, hi) in t (1 = pure noise); outside it a modality is sampled
    from the conditional pass alone (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited
    Interval"). At high noise the x0 prediction is a blurred mean of where events may be, so
    cond - uncond there mostly encodes "fewer / more events than an average clip"."""

    video: float
    audio: float
    modality_video: float
    modality_audio: float
    interval: tuple[float, float] = (0.0, 1.0)

    def at(self, t: dict[str, float]) -> "Guidance":
        """The scales in force at noise levels {modality: t}: prompt guidance off outside `interval`."""
        lo, hi = self.interval
        off = {m: not (0.0 < t[m] and lo <= t[m] <= hi) for m in MEDIA}  # t = 0: held clean, not sampled
        return replace(self, video=1.0 if off["video"] else self.video, audio=1.0 if off["audio"] else self.audio)

    @property
    def needs_uncond(self) -> bool:
        return self.video != 1.0 or self.audio != 1.0

    @property
    def needs_nocross(self) -> bool:
        return self.modality_video != 1.0 or self.modality_audio != 1.0

    def combine(self, x0: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """{pass: {modality: x0}} -> guided {modality: x0}."""
        out = {}
        for m in MEDIA:
            cond = x0["cond"][m]
            g = cond
            if self.needs_uncond:
                g = g + (getattr(self, m) - 1) * (cond - x0["uncond"][m])
            if self.needs_nocross:
                g = g + (getattr(self, f"modality_{m}") - 1) * (cond - x0["nocross"][m])
            out[m] = g
        return out


def predict_x0(net: AVDiT, x: dict[str, torch.Tensor], t: dict[str, torch.Tensor], cond: Conditioning,
               guidance: Guidance, modulation: Modulation | None = None) -> dict[str, torch.Tensor]:
    """Guided x0 for both modalities from one batched forward over the needed passes (the
    unconditional pass is skipped at steps where no modality is guided). `modulation`: this step's
    [cond | uncond] rows of `Conditioning.modulation_table` (None: the forward computes its own)."""
    guidance = guidance.at({m: float(t[m][0]) for m in MEDIA})
    passes = ("cond",) + ("uncond",) * guidance.needs_uncond + ("nocross",) * guidance.needs_nocross
    batch = x["video"].shape[0]
    prompts = {"cond": cond.cond, "uncond": cond.uncond}
    ids = torch.cat([prompts["uncond" if p == "uncond" else "cond"][0] for p in passes])  # (KB, P)
    mask = torch.cat([prompts["uncond" if p == "uncond" else "cond"][1] for p in passes])  # (KB, P)
    cross = torch.tensor([p != "nocross" for p in passes], device=ids.device).repeat_interleave(batch)  # (KB,)
    k = len(passes)
    with autocast(ids.device):
        rows = torch.cat([torch.arange(batch, device=ids.device) + batch * (p == "uncond") for p in passes])
        states = cond.states.select(rows)  # each pass's rows of [cond | uncond]
        # every pass shares the timeline: guidance acts on labels, not layout
        extra = {} if cond.slots is None else {"slots": cond.slots.repeat(k, 1)}
        if modulation is not None:
            extra["modulation"] = modulation.select(rows)
        out = net(x["video"].repeat(k, 1, 1), x["audio"].repeat(k, 1, 1), t["video"].repeat(k), t["audio"].repeat(k),
                  ids, mask, cross_modal=cross, prompt_states=states, **extra)
    per_pass = {p: {m: out[m].float()[i * batch:(i + 1) * batch] for m in MEDIA} for i, p in enumerate(passes)}
    return guidance.combine(per_pass)


@dataclass
class Schedule:
    """The noise levels a sampling call visits: scheduler timesteps from `start` on, and each step's
    level per modality (each scheduler's own sigma: Heun repeats them, DPM rounds timesteps)."""

    timesteps: torch.Tensor
    t_steps: list[dict[str, float]]
    start: int  # steps skipped at the top (strength < 1)

    def __len__(self) -> int:
        return len(self.timesteps)


def schedule(schedulers: dict[str, object], noisy: list[str], steps: int, strength: float, device,
             sigmas: list[float] | None = None) -> Schedule:
    """Set the `noisy` modalities' schedulers to `steps` steps and return what they will visit; with
    `strength` < 1 only the levels <= strength (SDEdit, Meng et al. 2022). `sigmas`: the levels of the
    steps instead of the scheduler's own spacing (a distilled student's)."""
    for m in noisy:
        if sigmas is None:
            schedulers[m].set_timesteps(steps, device=device)
        else:
            schedulers[m].set_timesteps(sigmas=list(sigmas), device=device)
    sigmas = schedulers[noisy[0]].sigmas
    start = 0 if strength >= 1 else int((sigmas > strength).sum())  # sigmas fall from 1 to 0
    for m in noisy:
        schedulers[m].set_begin_index(start)
    timesteps = schedulers[noisy[0]].timesteps[start:]
    t_steps = [{m: float(schedulers[m].sigmas[start + i]) if m in noisy else 0.0 for m in MEDIA}
               for i in range(len(timesteps))]
    return Schedule(timesteps, t_steps, start)


def sample(net: AVDiT, x: dict[str, torch.Tensor], noisy: list[str], cond: Conditioning, guidance: Guidance,
           schedulers: dict[str, object], plan: Schedule, init: dict[str, torch.Tensor] | None = None,
           on_step: Callable | None = None, progress=None, predict: Callable | None = None,
           known: dict[str, torch.Tensor] | None = None, known_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Integrate the flow ODE for the `noisy` modalities of `x` ({modality: (B, N, D) tokens: noise, or
    clean for a given modality, which stays at t = 0}) over `plan` (from `schedule`). With a plan that
    starts below pure noise, each noisy modality starts from `init`'s tokens noised to its first level.
    `on_step(i, t, x) -> x` runs after every step (diffusers' step-end callback); `progress.update()`
    too. `predict(x, t, cond, guidance, modulation)` stands in for the guided network (`predict_x0`):
    a known flow in the tests, another network on another device in a check.

    `known` ({modality: (B, N, D) clean tokens}) where `known_mask` (B, N) is True: those tokens are
    context, not sampled. Before every pass they are set to where the straight path from their own
    starting noise to their clean value is at that level (the replacement method for temporal
    continuation and inpainting, Ho et al. 2022, "Video Diffusion Models", sec. 3.1), and they end clean."""
    if predict is None:
        def predict(x, t, cond, guidance, modulation):
            return predict_x0(net, x, t, cond, guidance, modulation)
    # the tokens' device, not the pipeline's `_execution_device`: that walks every module on each read
    device = x["video"].device
    if plan.start:  # x[m] holds the noise: mix in the modality's own tokens at the first kept level
        for m in noisy:
            s = float(schedulers[m].sigmas[plan.start])
            x[m] = (1 - s) * init[m] + s * x[m]
    batch = x["video"].shape[0]
    chunk = max(1, TABLE_ROWS // (2 * batch))  # steps per AdaLN table: its memory is bounded by rows
    context = {m: (known[m], known_mask[..., None], x[m].clone()) for m in noisy if known is not None and m in known}
    for i, step_t in enumerate(plan.timesteps):
        for m, (clean, where, noise) in context.items():
            s = plan.t_steps[i][m]
            x[m] = torch.where(where, (1 - s) * clean + s * noise, x[m])
        if i % chunk == 0:
            table = cond.modulation_table(net, plan.t_steps[i:i + chunk])
        t = {m: torch.full((batch,), plan.t_steps[i][m], device=device) for m in MEDIA}
        x0 = predict(x, t, cond, guidance, table.narrow(2 * batch * (i % chunk), 2 * batch))
        for m in noisy:
            v = x0_to_velocity(x[m], x0[m], t[m])
            x[m] = schedulers[m].step(v, step_t, x[m], return_dict=False)[0]
        if on_step is not None:
            x = on_step(i, step_t, x)
        if progress is not None:
            progress.update()
    for m, (clean, where, _) in context.items():
        x[m] = torch.where(where, clean, x[m])
    return x


__all__ = ["SAMPLERS", "TABLE_ROWS", "Guidance", "Schedule", "make_scheduler", "predict_x0", "sample", "schedule"]
