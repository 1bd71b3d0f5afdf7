"""Heun's method for the flow ODE, safe at the end of a uniform schedule.

diffusers' `FlowMatchHeunDiscreteScheduler` applies the second-order correction on every interval,
including the one that ends at the schedule's last level, t = 1/1000. The correction averages the
velocity at both ends of an interval, and the network predicts clean tokens, so the velocity at the end
is v = (x - x0) / t: at t = 1/1000 any change the network makes to its (nearly clean) input is
multiplied by 1000, and then by the interval's length. On a uniform schedule that last interval is long
(0.251 -> 0.001 at 5 steps, 0.043 -> 0.001 at 25), so that one correction moved the clip more than the
whole integration's error. On the shipped weights, Heun at 25 steps ended 16x (picture) and 8x (sound)
further from the ODE's solution (Euler at 100 steps) than Euler at 25 did; at 13 steps (the cost of
Euler's 25), on 100 held-out prompts, the judges read 30% of the digits in the picture and 51% in the
sound, against 96% and 96% for Euler at 25 steps.

Here the correction is skipped on the intervals that end at the last level or at 0, as EDM does for the
interval that ends at 0 (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Algorithm 2), with t = 1/1000 counted as clean. Every other interval gets the full correction.
N steps cost 2N - 2 network evaluations (N - 2 corrected intervals, then two Euler steps, the last of
which queries the network at t = 1/1000, as the Euler sampler does). Heun at 25 steps now ends 0.6x
(picture) and 0.7x (sound) as far from that solution as Euler at 25 steps; `tests/test_pipeline.py`
checks both behaviours on a flow whose solution is known in closed form.
"""
from __future__ import annotations

import torch
from diffusers import SchedulerMixin  # noqa: F401 (diffusers' loader looks the base class up by name in this module)
from diffusers.schedulers.scheduling_flow_match_heun_discrete import (FlowMatchHeunDiscreteScheduler,
                                                                  FlowMatchHeunDiscreteSchedulerOutput)


class FlowMatchHeunScheduler(FlowMatchHeunDiscreteScheduler):
    """Heun's method (predictor + corrector per interval) with Euler steps on the last two intervals.

    `sigmas[i]` is the noise level of the i-th network evaluation (plus a final 0), `timesteps` the
    same times 1000; `step` must be called once per evaluation, in order (the pipeline's loop does)."""

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device=device)
        doubled = self.sigmas  # [s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0]
        levels = torch.cat([doubled[:1], doubled[1:-1:2], doubled[-1:]]).float()  # [s0, ..., s_{N-1}, 0]
        n = len(levels) - 1  # intervals
        plan = []  # per evaluation: (kind, level of the interval's start, level of its end)
        for k in range(n):
            start, end = float(levels[k]), float(levels[k + 1])
            if k < n - 2:
                plan += [("predict", start, end), ("correct", start, end)]
            else:
                plan.append(("euler", start, end))
        self._plan = plan
        at = [start if kind != "correct" else end for kind, start, end in plan]  # where each evaluation is
        self.sigmas = torch.tensor(at + [0.0], dtype=torch.float32)  # the pipeline reads them as floats
        self.timesteps = (self.sigmas[:-1] * self.config.num_train_timesteps).to(device)
        self.num_inference_steps = num_inference_steps
        self._step_index = None
        self._begin_index = None
        self._saved = None

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True, **kwargs):
        """One network evaluation's velocity `model_output` at `sample` -> the next sample."""
        if self._step_index is None:
            self._step_index = self._begin_index or 0
        kind, start, end = self._plan[self._step_index]
        v = model_output.float()
        x = sample.float()
        if kind == "predict":
            self._saved = (x, v)
            out = x + (end - start) * v
        elif kind == "correct":
            x_start, v_start = self._saved
            self._saved = None
            out = x_start + (end - start) * 0.5 * (v_start + v)
        else:
            out = x + (end - start) * v
        self._step_index += 1
        out = out.to(model_output.dtype)
        return FlowMatchHeunDiscreteSchedulerOutput(prev_sample=out) if return_dict else (out,)

    @property
    def state_in_first_order(self) -> bool:
        return self._saved is None
