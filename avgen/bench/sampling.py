"""The denoising loop's speed: end to end per call and per step, its matmuls against the ceiling,
compiled (graph capture on CUDA, inductor on CPU) beside eager, and how time scales with duration."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from avgen.bench.config import BenchConfig
from avgen.bench.measure import PeakMemory, count_flops, sync
from avgen.data import make_dataset
from avgen.model.pipeline import AVGenPipeline, load_pipeline
from avgen.model.transformer import AVDiT
from avgen.train.config import preset


def make_pipeline(cfg: BenchConfig, device: torch.device, weights=None):
    """The shipped/given weights, or a freshly initialised model of the same size (speed does not
    depend on the weights' values)."""
    if weights is not None:
        return load_pipeline(weights, device=str(device), sampler=cfg.sampler)
    tc = preset(cfg.train_preset)
    ds = make_dataset("shapes", spec=tc.spec)
    torch.manual_seed(0)
    model = AVDiT.from_preset(cfg.model, tc.spec, tuple(str(d) for d in range(10)), ds.max_events, codec=tc.codec)
    return AVGenPipeline.from_transformer(model.eval(), cfg.sampler).to(device)


def prompts_for(pipe, batch: int, duration: float | None = None) -> list[str]:
    """Prompts of 3 labels (at most the model's), and for a clip longer than the model's as many as it
    takes (`AVGenPipeline.vocabulary_for`): every window of a long clip then has events to sample, so the
    scaling table times windows that run the network, not held silence."""
    vocab, n = pipe.vocab, min(3, pipe.transformer.config.max_events)
    if duration is not None and pipe.codec.num_tokens(duration) > pipe.codec.num_tokens():
        n = pipe.vocabulary_for(duration).max_events
    return [" ".join(vocab[(i + k) % len(vocab)] for k in range(n)) for i in range(batch)]


def time_generation(pipe, cfg: BenchConfig, batch: int, duration: float | None, device, repeats: int) -> dict:
    """End-to-end seconds per call (prompt to frames + waveform), per-step loop time, peak memory."""
    step_ends: list[float] = []

    def on_step(p, i, t, tensors):
        sync(device)
        step_ends.append(time.perf_counter())
        return {}

    pipe.set_progress_bar_config(disable=True)
    kwargs = call_kwargs(pipe, cfg, batch, duration)
    pipe(**{**kwargs, "num_inference_steps": 1})  # warm-up (allocator, kernels, first-call costs)
    best, best_loop, peak = math.inf, math.inf, 0.0
    for _ in range(repeats):
        step_ends.clear()
        with PeakMemory(device) as mem:
            sync(device)
            t0 = time.perf_counter()
            out = pipe(**kwargs, callback_on_step_end=on_step)
            sync(device)
            total = time.perf_counter() - t0
        best = min(best, total)
        best_loop = min(best_loop, step_ends[-1] - t0)  # the call up to the last step: decoding excluded
        peak = max(peak, mem.peak_mb)
    clip_s = out.audio.shape[-1] / out.sample_rate
    return {"generate_seconds": best / batch, "call_seconds": best, "loop_seconds": best_loop,
            "step_seconds": best_loop / len(step_ends), "clip_seconds": clip_s, "rtf": best / batch / clip_s,
            "peak_mem_mb": round(peak, 1)}


def call_kwargs(pipe, cfg: BenchConfig, batch: int, duration: float | None) -> dict:
    return dict(prompt=prompts_for(pipe, batch, duration), duration_s=duration, num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale, modality_scale=cfg.modality_scale,
                guidance_interval=cfg.guidance_interval,
                generator=[torch.Generator().manual_seed(i) for i in range(batch)])


def flops_per_step(pipe, cfg: BenchConfig, batch: int, duration: float | None) -> float:
    """Network FLOPs of the whole denoising loop divided by its steps (a step's passes depend on
    where guidance acts, so the loop is counted as it runs, not one step multiplied)."""
    with count_flops(pipe.transformer) as fc:
        pipe(**call_kwargs(pipe, cfg, batch, duration), output_type="latent")
    return fc.flops / pipe.num_timesteps  # per scheduler step, like `step_seconds` (Heun: ~2 per step)


MATMULS = ("addmm", "mm", "bmm", "baddbmm")


def matmul_figures(pipe, cfg: BenchConfig, batch: int, device, repeats: int) -> dict:
    """The loop's own matmuls, replayed alone: every aten matmul call of one sampling run is recorded
    (shapes and strides) and timed in isolation. Their rate against the gemm ceiling bounds what the
    whole loop could reach at these shapes even if attention, norms and Python cost nothing."""
    calls: list[tuple] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in MATMULS:
                calls.append((func, [(a.shape, a.stride()) if isinstance(a, torch.Tensor) else a for a in args]))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Recorder():
        pipe(**call_kwargs(pipe, cfg, batch, None), output_type="latent")
    unique: dict[tuple, list] = {}
    for func, args in calls:
        unique.setdefault((func, tuple(map(str, args))), [func, args, 0])[2] += 1
    seconds, flops = 0.0, 0.0
    for func, args, count in unique.values():
        real = [torch.randn(a[0], device=device).as_strided(a[0], a[1]) if isinstance(a, tuple) else a for a in args]
        out = func(*real)
        flops += count * 2 * out.numel() * args[-1][0][-2]  # 2 * M * N * K (K: rows of the right operand)
        inner = max(1, min(200, int(2e-3 * 1e9 / max(1.0, 2 * out.numel() * args[-1][0][-2]))))
        best = math.inf
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                func(*real)
            sync(device)
            best = min(best, (time.perf_counter() - t0) / inner)
        seconds += count * best
    return {"matmul_calls": len(calls), "matmul_shapes": len(unique), "matmul_seconds": round(seconds, 4),
            "matmul_gflops": round(flops / seconds / 1e9, 2)}


def loop_figures(pipe, cfg: BenchConfig, batch: int, gemm: float, device) -> dict:
    r = time_generation(pipe, cfg, batch, None, device, cfg.repeats)
    f = flops_per_step(pipe, cfg, batch, None)
    loop_gflops = f / r["step_seconds"] / 1e9
    mm = matmul_figures(pipe, cfg, batch, device, cfg.repeats)
    mm["matmul_utilization"] = round(mm["matmul_gflops"] / gemm, 4)
    mm["matmul_share_of_loop"] = round(mm["matmul_seconds"] / r["loop_seconds"], 4)
    return {"batch": batch, "flops_per_step": f, "loop_gflops": round(loop_gflops, 2), **mm,
            "utilization": round(loop_gflops / gemm, 4), **{k: round(v, 4) if isinstance(v, float) else v
                                                              for k, v in r.items()}}


def captured_figures(pipe, cfg: BenchConfig, device, flops_per_step: float | None = None,
                     gemm: float | None = None, network: str = "transformer") -> dict:
    """Batch-1 latency with the network compiled, beside the eager figures: on CUDA with graph capture
    (`torch.compile(mode="reduce-overhead")`: each step's few hundred kernel launches replayed as one
    graph), on CPU with inductor (elementwise ops fused into a few C++ kernels). The first call, which
    compiles, is timed apart. Then eager and compiled calls alternate for `cfg.repeats` rounds (the
    order flips each round), each round timing both the same way (`time_generation`), so `speedup`
    (the median over rounds of eager loop time / compiled loop time) compares the two under the same
    machine noise. With `flops_per_step` (the eager batch-1 count: compiling changes no arithmetic)
    and `gemm`, the compiled loop's GFLOP/s and its share of the gemm ceiling are reported too, and
    eager's share in the same rounds.
    A failure to compile is reported, not raised: the eager figures stand either way. `network`: the
    pipeline's attribute holding the network the sampler runs ("student" for the fast sampler)."""
    eager = getattr(pipe, network)
    mode = "reduce-overhead" if device.type == "cuda" else None
    try:
        compiled = torch.compile(eager, dynamic=False, mode=mode)
        setattr(pipe, network, compiled)
        pipe.set_progress_bar_config(disable=True)
        sync(device)
        t0 = time.perf_counter()
        pipe(**call_kwargs(pipe, cfg, 1, None))  # compiles every shape the loop uses (guided and unguided)
        sync(device)
        first = time.perf_counter() - t0
        best: dict[str, dict] = {}
        ratios = []
        for i in range(max(1, cfg.repeats)):
            loop = {}
            for name, net in (("compiled", compiled), ("eager", eager))[::1 if i % 2 == 0 else -1]:
                setattr(pipe, network, net)
                r = time_generation(pipe, cfg, 1, None, device, 1)
                loop[name] = r["loop_seconds"]
                if name not in best or r["loop_seconds"] < best[name]["loop_seconds"]:
                    best[name] = r
            ratios.append(loop["eager"] / loop["compiled"])
    except Exception as e:  # noqa: BLE001 (a compiler failure of any kind is a figure here)
        return {"mode": mode or "default", "error": " ".join(f"{type(e).__name__}: {e}".split())[:500]}
    finally:
        setattr(pipe, network, eager)
    r = best["compiled"]
    out = {"mode": mode or "default", "first_call_seconds": round(first, 2),
           **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()},
           "eager_loop_seconds": round(best["eager"]["loop_seconds"], 4),
           "speedup": round(statistics.median(ratios), 3), "speedup_by_round": [round(x, 3) for x in ratios]}
    if flops_per_step:
        out["loop_gflops"] = round(flops_per_step / r["step_seconds"] / 1e9, 2)
        if gemm:
            out["utilization"] = round(out["loop_gflops"] / gemm, 4)
            out["eager_utilization"] = round(flops_per_step / best["eager"]["step_seconds"] / 1e9 / gemm, 4)
    return out


def fast_figures(pipe, cfg: BenchConfig, device, teacher: dict) -> dict:
    """The fast sampler (the weights' distilled student) at batch 1, timed like the default sampler and
    right after it (`teacher`: its batch-1 figures from this run): per clip, the loop, the decode (what is
    left of the call after the last step: mostly Griffin-Lim), and the speed-up."""
    fast = replace(cfg, sampler="fast", steps=cfg.fast_steps)
    pipe.set_sampler("fast")
    try:
        r = time_generation(pipe, fast, 1, None, device, cfg.repeats)
    finally:
        pipe.set_sampler(cfg.sampler)
    r = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
    r["decode_seconds"] = round(r["call_seconds"] - r["loop_seconds"], 4)
    r["steps"] = cfg.fast_steps
    r["griffin_lim_iters"] = pipe.student_config.griffin_lim_iters or pipe.codec.cfg.griffin_lim_iters
    r["speedup_vs_default"] = round(teacher["generate_seconds"] / r["generate_seconds"], 2)
    return r


def fit_exponent(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x): cost ~ x ** slope."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def scaling(pipe, cfg: BenchConfig, device) -> dict:
    # the best of `repeats` calls per duration: one slow call (the machine's, not the loop's) would bend the fit
    by_dur = {d: time_generation(pipe, cfg, 1, d, device, cfg.repeats)["generate_seconds"] for d in cfg.durations}
    by_batch = {b: time_generation(pipe, cfg, b, None, device, 1)["generate_seconds"] for b in cfg.batch_sizes}
    return {"seconds_by_duration": {str(k): round(v, 4) for k, v in by_dur.items()},
            "duration_exponent": round(fit_exponent(list(by_dur), list(by_dur.values())), 3),
            "seconds_per_clip_by_batch": {str(k): round(v, 4) for k, v in by_batch.items()},
            "batch_exponent": round(fit_exponent(list(by_batch), [v * b for b, v in by_batch.items()]), 3)}
