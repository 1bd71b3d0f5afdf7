"""Training's speed: full steps (data, forward, backward, AdamW, EMA) against the ceiling, and what
one data worker delivers."""
from __future__ import annotations

import time

import torch

from avgen.bench.config import BenchConfig
from avgen.bench.measure import count_flops, sync
from avgen.data.sources import SourceError
from avgen.model.codec import AVCodec
from avgen.model.objective import encode_prompts, training_loss
from avgen.train.config import preset
from avgen.train.data import DrawSpec, SampleOrder, build_dataset, load_batch, unpack_frames
from avgen.train.runtime import init_runtime
from avgen.train.state import EMA, Trainer, build_optimizer, build_scheduler
from avgen.train.surgery import build_model


def training_forward_flops(trainer, batch) -> float:
    """FLOPs of the loss's forward pass. A training step costs 3x this (backward = 2x forward), the
    usual MFU convention; counted without autograd because the flop counter's module hooks do not
    support every autograd graph."""
    m = trainer.model
    ids, mask = encode_prompts(batch.labels, m.config.vocab, m.config.max_events, trainer.rt.device)
    with count_flops(m) as fc:
        training_loss(m, trainer.codec, unpack_frames(batch.frames), batch.audio, ids, mask,
                      [torch.Generator().manual_seed(i) for i in range(len(batch.labels))], trainer.cfg.objective)
    return fc.flops


def training_figures(cfg: BenchConfig, gemm: float, device) -> dict:
    """Clips/s of full training steps (data, forward, backward, AdamW, EMA) at the preset's batch."""
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
