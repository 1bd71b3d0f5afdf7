"""`avgen bench`: how fast the denoising loop and training run, against this machine's ceiling.

Everything is measured in ONE run on the current machine, so ratios are meaningful even on a noisy
machine: the best dense matmul rate (`gemm_gflops`) is the ceiling, and the loop's achieved rate is
reported as a fraction of it (`utilization`). FLOPs are counted with `torch.utils.flop_counter`
(matmuls and attention; elementwise work is not counted, as usual for MFU).
"""
from __future__ import annotations

import math
import os
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def _default(name: str):
    """A sampling default of the library (`GenerateSettings`): the bench times what the demo runs."""
    from avgen.model.pipeline import GenerateSettings

    return getattr(GenerateSettings(), name)


@dataclass(frozen=True)
class BenchConfig:
    model: str = "AVDiT-S"
    train_preset: str = "digits-cpu"
    steps: int = _default("steps")  # the demo's default settings
    sampler: str = _default("sampler")
    guidance_scale: float = _default("guidance_scale")
    modality_scale: float = _default("modality_scale")
    guidance_interval: tuple[float, float] | None = _default("guidance_interval")  # None: the T2AV default
    big_batch: int = 8
    durations: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    gemm_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    train_steps: int = 6
    repeats: int = 3


BENCH_PRESETS = {
    "default": BenchConfig(),
    # CI's smoke test: the same code path on a tiny model, seconds.
    "tiny": BenchConfig(model="AVDiT-T", train_preset="tiny", steps=2, big_batch=2, durations=(1.5, 3.0),
                        batch_sizes=(1, 2), gemm_sizes=(64, 128), train_steps=2, repeats=1),
}


# ----------------------------------------------------------------------------- the ceiling
def gemm_gflops(device: torch.device, sizes, repeats: int = 3) -> dict:
    """Best dense matmul rate over square sizes: fp32 on CPU, bf16 on CUDA (each device's fast path)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        inner = max(1, int(2e9 / (2 * n ** 3)))  # ~2 GFLOP per timing, enough to dwarf timer noise
        a @ b
        best = math.inf
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                a @ b
            sync(device)
            best = min(best, (time.perf_counter() - t0) / inner)
        rates[n] = 2 * n ** 3 / best / 1e9
    return {"gemm_gflops": max(rates.values()), "gemm_by_size": {str(k): round(v, 1) for k, v in rates.items()},
            "gemm_dtype": str(dtype).replace("torch.", "")}


class count_flops:
    """FlopCounterMode with parameters frozen for the count: its module hooks assert on a leaf that
    requires grad when a block receives one as an argument (no autograd graph is needed to count)."""

    def __init__(self, module: torch.nn.Module):
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)
        self._nograd, self._fc = torch.no_grad(), FlopCounterMode(display=False)
        self._nograd.__enter__()
        self._fc.__enter__()
        return self

    def __exit__(self, *exc):
        self._fc.__exit__(*exc)
        self._nograd.__exit__(*exc)
        for p in self.params:
            p.requires_grad_(True)
        self.flops = float(self._fc.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak resident memory while the block runs (CPU: sampled RSS; CUDA: the allocator's peak)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil
        proc, self._stop = psutil.Process(os.getpid()), threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2 ** 20)
                self._stop.wait(0.005)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self._stop.set()
            self._thread.join()


# ----------------------------------------------------------------------------- sampling
def make_pipeline(cfg: BenchConfig, device: torch.device, weights=None):
    """The shipped/given weights, or a freshly initialised model of the same size (speed does not
    depend on the weights' values)."""
    from avgen.data import make_dataset
    from avgen.model.pipeline import AVGenPipeline, load_pipeline
    from avgen.model.transformer import AVDiT
    from avgen.train.config import preset

    if weights is not None:
        return load_pipeline(weights, device=str(device), sampler=cfg.sampler)
    tc = preset(cfg.train_preset)
    ds = make_dataset("shapes", spec=tc.spec)
    torch.manual_seed(0)
    model = AVDiT.from_preset(cfg.model, tc.spec, tuple(str(d) for d in range(10)), ds.max_events, codec=tc.codec)
    return AVGenPipeline.from_transformer(model.eval(), cfg.sampler).to(device)


def prompts_for(pipe, batch: int) -> list[str]:
    vocab = pipe.vocab
    return [" ".join(vocab[(i + k) % len(vocab)] for k in range(min(3, pipe.transformer.config.max_events)))
            for i in range(batch)]


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
    return dict(prompt=prompts_for(pipe, batch), duration_s=duration, num_inference_steps=cfg.steps,
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
    from torch.utils._python_dispatch import TorchDispatchMode

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
                     gemm: float | None = None) -> dict:
    """Batch-1 latency with the network compiled, beside the eager figures: on CUDA with graph capture
    (`torch.compile(mode="reduce-overhead")`: each step's few hundred kernel launches replayed as one
    graph), on CPU with inductor (elementwise ops fused into a few C++ kernels). The first call, which
    compiles, is timed apart. Then eager and compiled calls alternate for `cfg.repeats` rounds (the
    order flips each round), each round timing both the same way (`time_generation`), so `speedup`
    (the median over rounds of eager loop time / compiled loop time) compares the two under the same
    machine noise. With `flops_per_step` (the eager batch-1 count: compiling changes no arithmetic)
    and `gemm`, the compiled loop's GFLOP/s and its share of the gemm ceiling are reported too, and
    eager's share in the same rounds.
    A failure to compile is reported, not raised: the eager figures stand either way."""
    eager = pipe.transformer
    mode = "reduce-overhead" if device.type == "cuda" else None
    try:
        compiled = torch.compile(eager, dynamic=False, mode=mode)
        pipe.transformer = compiled
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
                pipe.transformer = net
                r = time_generation(pipe, cfg, 1, None, device, 1)
                loop[name] = r["loop_seconds"]
                if name not in best or r["loop_seconds"] < best[name]["loop_seconds"]:
                    best[name] = r
            ratios.append(loop["eager"] / loop["compiled"])
    except Exception as e:  # noqa: BLE001 (a compiler failure of any kind is a figure here)
        return {"mode": mode or "default", "error": " ".join(f"{type(e).__name__}: {e}".split())[:500]}
    finally:
        pipe.transformer = eager
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


def fit_exponent(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x): cost ~ x ** slope."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def scaling(pipe, cfg: BenchConfig, device) -> dict:
    by_dur = {d: time_generation(pipe, cfg, 1, d, device, 1)["generate_seconds"] for d in cfg.durations}
    by_batch = {b: time_generation(pipe, cfg, b, None, device, 1)["generate_seconds"] for b in cfg.batch_sizes}
    return {"seconds_by_duration": {str(k): round(v, 4) for k, v in by_dur.items()},
            "duration_exponent": round(fit_exponent(list(by_dur), list(by_dur.values())), 3),
            "seconds_per_clip_by_batch": {str(k): round(v, 4) for k, v in by_batch.items()},
            "batch_exponent": round(fit_exponent(list(by_batch), [v * b for b, v in by_batch.items()]), 3)}


# ----------------------------------------------------------------------------- training
def training_forward_flops(trainer, batch) -> float:
    """FLOPs of the loss's forward pass. A training step costs 3x this (backward = 2x forward), the
    usual MFU convention; counted without autograd because the flop counter's module hooks do not
    support every autograd graph."""
    from avgen.model.objective import encode_prompts, training_loss
    from avgen.train.loop import unpack_frames

    m = trainer.model
    ids, mask = encode_prompts(batch.labels, m.config.vocab, m.config.max_events, trainer.rt.device)
    with count_flops(m) as fc:
        training_loss(m, trainer.codec, unpack_frames(batch.frames), batch.audio, ids, mask,
                      [torch.Generator().manual_seed(i) for i in range(len(batch.labels))], trainer.cfg.objective)
    return fc.flops


def training_figures(cfg: BenchConfig, gemm: float, device) -> dict:
    """Clips/s of full training steps (data, forward, backward, AdamW, EMA) at the preset's batch."""
    from avgen.train.config import preset
    from avgen.train.loop import (EMA, SampleOrder, Trainer, build_dataset, build_model, build_optimizer,
                                  build_scheduler, init_runtime, load_batch)
    from avgen.model.codec import AVCodec

    tc = preset(cfg.train_preset, {"dataset": "shapes"})  # same shapes as any dataset; needs no files
    rt = init_runtime(str(device))
    ds = build_dataset(tc)
    model = build_model(tc, ds).to(device)
    opt = build_optimizer(model, tc)
    trainer = Trainer(tc, rt, model, model, AVCodec(tc.spec, tc.codec).to(device), EMA(model, tc.ema_decay),
                      opt, build_scheduler(opt, tc))
    order = SampleOrder(len(ds), tc.data_seed, shuffle=False)
    b = tc.batch_size
    batches = [load_batch(ds, order, range(s * b, (s + 1) * b), tc.seed, device, tc.codec.frames_per_token)
               for s in range(cfg.train_steps + 1)]
    flops = 3 * training_forward_flops(trainer, batches[0])
    trainer.step(batches[0], 0)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for s in range(1, cfg.train_steps + 1):
        trainer.step(batches[s], s)
    sync(device)
    step_s = (time.perf_counter() - t0) / cfg.train_steps
    achieved = flops / step_s / 1e9
    return {"train_preset": cfg.train_preset, "train_batch": b, "train_step_seconds": round(step_s, 4),
            "train_clips_per_s": round(b / step_s, 2), "train_flops_per_step": flops,
            "train_gflops": round(achieved, 2), "train_utilization": round(achieved / gemm, 4)}


# ----------------------------------------------------------------------------- the input side of training
def input_figures(cfg: BenchConfig, data_root=None) -> dict:
    """What one data worker delivers (clips/s on one thread, as a DataLoader worker runs) and what a
    batch weighs on its way to the device (MB per clip), with the loss's noise drawn per sample in the
    worker and with it left to the device (`noise_on_device`). The preset's dataset when its files are
    found (Talking Digits for digits-cpu), else shapes. A GPU needs workers >= its clips/s divided by
    the per-worker rate, and a link that carries clips/s times the MB per clip."""
    from avgen.data.sources import SourceError
    from avgen.model.codec import AVCodec
    from avgen.train.config import preset
    from avgen.train.loop import DrawSpec, SampleOrder, build_dataset, load_batch

    tc = preset(cfg.train_preset)
    try:
        ds = build_dataset(tc, data_root)
    except (SourceError, OSError, ValueError):
        tc = preset(cfg.train_preset, {"dataset": "shapes"})
        ds = build_dataset(tc)
    codec = AVCodec(tc.spec, tc.codec)
    order, b, n = SampleOrder(len(ds), tc.data_seed, shuffle=False), tc.batch_size, max(2, cfg.train_steps)
    out = {"input_dataset": tc.dataset, "input_batch": b}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, noise in (("", True), ("_device_noise", False)):
            spec = DrawSpec(tc.objective, tc.codec.frames_per_token, codec.dims, tc.model.timeline_cond, noise=noise)
            load_batch(ds, order, range(b), tc.seed, torch.device("cpu"), spec.frames_per_token, spec)  # warm caches
            t0 = time.perf_counter()
            for k in range(1, n + 1):
                batch = load_batch(ds, order, range(k * b, (k + 1) * b), tc.seed, torch.device("cpu"),
                                   spec.frames_per_token, spec)
            seconds = time.perf_counter() - t0
            tensors = [batch.frames, batch.audio, batch.slots]
            batch.draws.map(tensors.append)
            out[f"input_clips_per_s{name}"] = round(n * b / seconds, 1)
            out[f"input_mb_per_clip{name}"] = round(sum(x.numel() * x.element_size() for x in tensors) / b / 1e6, 4)
        out["input_frames_packed"] = batch.frames.dtype == torch.uint8
    finally:
        torch.set_num_threads(threads)
    return out


# ----------------------------------------------------------------------------- the report
def run_bench(cfg: BenchConfig, device: str = "auto", weights=None, log=print, captured: bool = False,
              data_root=None) -> dict:
    from avgen.model.device import resolve_device

    dev = resolve_device(device)
    log(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    report = {"device": str(dev), "threads": torch.get_num_threads(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"), "config": cfg.__dict__ | {}}
    report.update(gemm_gflops(dev, cfg.gemm_sizes, cfg.repeats))
    log(f"gemm ceiling: {report['gemm_gflops']:.1f} GFLOP/s ({report['gemm_dtype']})")
    pipe = make_pipeline(cfg, dev, weights)
    report["params"] = sum(p.numel() for p in pipe.transformer.parameters())
    batches = [loop_figures(pipe, cfg, b, report["gemm_gflops"], dev) for b in (1, cfg.big_batch)]
    report.update({k: v for k, v in batches[0].items() if k != "batch"})
    report["batches"] = {str(r["batch"]): r for r in batches}
    log("loop measured")
    if captured:
        report["captured"] = captured_figures(pipe, cfg, dev, batches[0]["flops_per_step"], report["gemm_gflops"])
        log("captured loop measured")
    report["scaling"] = scaling(pipe, cfg, dev)
    log("scaling measured")
    report.update(training_figures(cfg, report["gemm_gflops"], dev))
    report.update(input_figures(cfg, data_root))
    log("training measured")
    report["config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()}
    return report


def format_table(r: dict) -> str:
    rows = [("device / threads", f"{r['device']} / {r['threads']}"),
            ("gemm ceiling", f"{r['gemm_gflops']:.1f} GFLOP/s {r['gemm_dtype']} {r['gemm_by_size']}"),
            ("model params", f"{r['params'] / 1e6:.2f} M")]
    for b, x in r["batches"].items():
        rows += [(f"batch {b}: FLOPs/step", f"{x['flops_per_step'] / 1e9:.2f} GFLOP"),
                 (f"batch {b}: loop", f"{x['loop_gflops']:.1f} GFLOP/s = {100 * x['utilization']:.1f}% of gemm"),
                 (f"batch {b}: its matmuls alone", f"{x['matmul_gflops']:.1f} GFLOP/s = "
                  f"{100 * x['matmul_utilization']:.1f}% of gemm; {x['matmul_seconds']:.3f} s = "
                  f"{100 * x['matmul_share_of_loop']:.0f}% of the loop's time"),
                 (f"batch {b}: per clip", f"{x['generate_seconds']:.3f} s for {x['clip_seconds']:.2f} s "
                                          f"(rtf {x['rtf']:.3f}), peak {x['peak_mem_mb']:.0f} MB")]
    if "captured" in r:
        c = r["captured"]
        if "error" in c:
            rows.append(("batch 1: captured", f"compile failed ({c['error']})"))
        else:
            rate = (f", {c['loop_gflops']:.1f} GFLOP/s = {100 * c['utilization']:.1f}% of gemm (eager in the same "
                    f"rounds: {100 * c['eager_utilization']:.1f}%)" if "utilization" in c else "")
            rows.append(("batch 1: captured",
                         f"{c['generate_seconds']:.3f} s per clip, {1e3 * c['step_seconds']:.1f} ms per step, loop "
                         f"{c['speedup']:.2f}x eager's (median of {len(c['speedup_by_round'])} alternating rounds)"
                         f"{rate} ({c['mode']}; first call {c['first_call_seconds']:.1f} s)"))
    s = r["scaling"]
    rows += [("s/clip by duration", f"{s['seconds_by_duration']} exponent {s['duration_exponent']}"),
             ("s/clip by batch", f"{s['seconds_per_clip_by_batch']} (batch cost exponent {s['batch_exponent']})"),
             ("training", f"{r['train_clips_per_s']} clips/s at batch {r['train_batch']} "
                          f"({r['train_gflops']} GFLOP/s = {100 * r['train_utilization']:.1f}% of gemm)")]
    if "input_clips_per_s" in r:
        rows.append(("training input, one worker", f"{r['input_clips_per_s']} clips/s, {r['input_mb_per_clip']} MB "
                     f"per clip to the device ({r['input_clips_per_s_device_noise']} clips/s, "
                     f"{r['input_mb_per_clip_device_noise']} MB with noise_on_device; {r['input_dataset']}, frames "
                     f"{'uint8' if r['input_frames_packed'] else 'float32'})"))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
