"""`avgen bench`: how fast the denoising loop and training run, against this machine's ceiling.

Everything is measured in ONE run on the current machine, so ratios are meaningful even on a noisy
machine: the best dense matmul rate (`gemm_gflops`) is the ceiling, and the loop's achieved rate is
reported as a fraction of it (`utilization`). FLOPs are counted with `torch.utils.flop_counter`
(matmuls and attention; elementwise work is not counted, as usual for MFU).

    measure.py   the ceiling, FLOP counting, peak memory
    sampling.py  the denoising loop: per call, per step, its matmuls, compiled, scaling with duration
    training.py  training steps and what one data worker delivers
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch

from avgen.bench.config import BENCH_PRESETS, BenchConfig
from avgen.bench.measure import PeakMemory, count_flops, gemm_gflops, sync
from avgen.bench.sampling import captured_figures, fast_figures, loop_figures, make_pipeline, scaling
from avgen.bench.training import input_figures, training_figures
from avgen.model.device import resolve_device


def run_bench(cfg: BenchConfig, device: str = "auto", weights=None, log=print, captured: bool = False,
              data_root=None) -> dict:
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
    if getattr(pipe, "student", None) is not None:
        report["fast"] = fast_figures(pipe, cfg, dev, batches[0])
        log("fast sampler measured")
    if captured:
        report["captured"] = captured_figures(pipe, cfg, dev, batches[0]["flops_per_step"], report["gemm_gflops"])
        if "fast" in report:
            pipe.set_sampler("fast")
            try:
                report["captured_fast"] = captured_figures(pipe, replace(cfg, sampler="fast", steps=cfg.fast_steps), dev,
                                                           network="student")
            finally:
                pipe.set_sampler(cfg.sampler)
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
    if "fast" in r:
        f = r["fast"]
        rows.append(("batch 1: fast sampler", f"{f['generate_seconds']:.3f} s for {f['clip_seconds']:.2f} s (rtf "
                     f"{f['rtf']:.3f}; {f['steps']} passes {f['loop_seconds']:.3f} s + decode {f['decode_seconds']:.3f} s "
                     f"at {f['griffin_lim_iters']} Griffin-Lim iterations), {f['speedup_vs_default']:.1f}x the "
                     "default sampler's batch-1 time in this run"))
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
    if "captured_fast" in r and "error" not in r["captured_fast"]:
        c = r["captured_fast"]
        rows.append(("batch 1: fast, captured", f"{c['generate_seconds']:.4f} s per clip, loop {c['speedup']:.2f}x "
                     f"eager's ({c['mode']})"))
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


__all__ = ["BENCH_PRESETS", "BenchConfig", "PeakMemory", "captured_figures", "count_flops", "format_table",
           "gemm_gflops", "input_figures", "make_pipeline", "run_bench", "sync", "training_figures"]
