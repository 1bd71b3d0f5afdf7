"""The training loop: `train` runs (or continues) a run until its last step; the pieces it drives
live beside it, one job each:

    runtime.py   one process or one rank of a torchrun launch (DDP)
    data.py      sample order, batches (in this process or in data workers), the loss's draws ahead
    state.py     EMA, AdamW + LR schedule, one optimisation step (`Trainer`)
    surgery.py   fine-tuning: new inputs or blocks grown onto a pretrained model, starting at zero
    record.py    the run folder: config, metrics.jsonl, checkpoints, callbacks (`Recorder`)
    checkpoint.py  atomic full-state checkpoints with exact resume

A run's result is a function of its config alone (see data.py); a killed run resumed from its last
checkpoint continues bit for bit.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from avgen.data.events import EventDataset
from avgen.model.weights import load_network
from avgen.train.checkpoint import latest_checkpoint
from avgen.train.config import TrainConfig
from avgen.train.data import SampleOrder, batches, build_dataset, has_events
from avgen.train.record import Callback, Recorder, check_run_dir, write_run_files
from avgen.train.runtime import Runtime, close_runtime, init_runtime, out_of_time
from avgen.train.state import Progress, Trainer
from avgen.train.surgery import adapt_vocabulary, build_model, colour, config_of_model, grow, layout_prior


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    skipped_steps: int
    last_loss: float
    rank: int = 0  # under torchrun every rank returns; only rank 0 wrote the files


def setup_training(cfg: TrainConfig, run_dir: Path, resume: bool, init_from, data_root, rt: Runtime,
                   log, grow_depth: int | None = None) -> tuple[TrainConfig, object, Trainer, Progress]:
    """(config, dataset, trainer, progress) for a fresh, fine-tuned or resumed run."""
    if grow_depth is not None and init_from is None:
        raise ValueError("growing a model's depth needs the pretrained model to grow (--init-from)")
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        log(f"--resume: {run_dir} holds no checkpoint yet: the run starts from step 0")
    if checkpoint is not None and init_from is not None:
        log(f"resuming from {checkpoint.name}: --init-from {init_from} is ignored")
    pretrained = load_network(init_from) if init_from is not None and checkpoint is None else None
    if pretrained is not None:
        wanted = {"count_cond": cfg.model.count_cond, "timeline_cond": cfg.model.timeline_cond,
                  "label_probe": cfg.model.label_probe}
        prior = None
        if cfg.model.timeline_cond and not pretrained.config.get("timeline_cond", False):
            theirs = config_of_model(cfg, pretrained)  # the pretrained model's clip spec and codec
            data = build_dataset(theirs, data_root)
            if has_events(data):
                prior = layout_prior(data, theirs)
            else:
                log(f"dataset {cfg.dataset} has no ground-truth events: the model gets no timeline input")
                wanted["timeline_cond"] = False
        pretrained = grow(pretrained, wanted, log, prior, depth=grow_depth, seed=cfg.seed)
        pretrained = colour(pretrained, cfg.spec.channels, log)
        cfg, asked = config_of_model(cfg, pretrained), cfg
        changed = _changed_keys({k: asked.to_dict()[k] for k in ("model", "codec", "spec")},
                                {k: cfg.to_dict()[k] for k in ("model", "codec", "spec")})
        if changed:
            log(f"--init-from {init_from}: keeping the pretrained model's {', '.join(changed)}")
    ds = build_dataset(cfg, data_root)
    if pretrained is None and checkpoint is None and cfg.model.timeline_cond and not has_events(ds):
        log(f"dataset {cfg.dataset} has no ground-truth events: training without a timeline input "
            "(model.timeline_cond=false)")
        cfg = cfg.override({"model.timeline_cond": False})
    if pretrained is not None:
        pretrained = adapt_vocabulary(pretrained, ds, cfg, log, cfg.seed)
    trainer = Trainer.create(cfg, pretrained or build_model(cfg, ds), rt)
    if checkpoint is None:
        return cfg, ds, trainer, Progress()
    meta = trainer.load(checkpoint)
    # through TrainConfig: a key the saved config lacks takes the default it was trained with
    changed = _changed_keys(TrainConfig.from_dict(meta["train_config"]).to_dict(), cfg.to_dict())
    log(f"resumed from {checkpoint} at step {meta['progress']['step']}"
        + (f" (config changed: {', '.join(changed)})" if changed else ""))
    return cfg, ds, trainer, Progress(**meta["progress"])


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def train(cfg: TrainConfig, run_dir, *, resume: bool = False, init_from=None, device: str = "auto",
          data_root=None, progress_bar: bool = True, log=None, workers: int = 0,
          max_seconds: float | None = None, grow_depth: int | None = None, compiled: bool = False,
          callbacks: tuple[Callback, ...] = ()) -> TrainResult:
    """Train (or continue) the run in `run_dir` until `cfg.steps`. `avgen train` calls it through
    `avgen.api.training.train`, which adds the sample clips and held-out validation as callbacks.

    resume: continue from the newest checkpoint (or from scratch if the run never saved one).
    init_from: an exported weights folder to fine-tune (its size, codec and clip spec win over cfg's,
        except that a grey model is coloured when cfg asks for RGB: `surgery.colour`).
    grow_depth: with init_from, append blocks to the pretrained model up to this depth; each new block
    starts as the identity (see `grow`).
    workers: data worker processes building batches ahead (0 = in this process; same result).
    max_seconds: stop after the first step that ends this long after training began, with a
    checkpoint (resume goes on from there exactly); None = run to `cfg.steps`.
    compiled: the training forward and backward through `torch.compile` (fused kernels, fewer launches:
    a small model on a GPU is launch-bound). Float results differ from eager in the last bits, so a
    compiled run replays compiled runs, not eager ones; checkpoints have the same format and names
    either way (the model, its EMA and checkpoints stay plain). Not tried under torchrun.
    callbacks: work at chosen steps on the main process (see `avgen.train.record.Callback`).
    """
    if workers < 0 or (max_seconds is not None and not max_seconds > 0):
        raise ValueError(f"workers must be >= 0 and max_seconds positive, got {workers} and {max_seconds}")
    run_dir = Path(run_dir)
    cfg.check()
    check_run_dir(run_dir, resume)
    rt = init_runtime(device)
    try:
        if cfg.batch_size % rt.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} does not split over {rt.world_size} processes")
        log = (log or _to_stderr) if rt.is_main else _silent
        return _train(cfg, run_dir, resume, init_from, data_root, rt, progress_bar and rt.is_main, log, workers,
                      max_seconds, grow_depth, compiled, tuple(callbacks))
    finally:
        close_runtime(rt)


def _train(cfg, run_dir: Path, resume, init_from, data_root, rt: Runtime, show_bar: bool, log, workers: int = 0,
           max_seconds: float | None = None, grow_depth: int | None = None, compiled: bool = False,
           callbacks: tuple[Callback, ...] = ()) -> TrainResult:
    cfg, ds, trainer, progress = setup_training(cfg, run_dir, resume, init_from, data_root, rt, log, grow_depth)
    if compiled:  # the module the step calls; the model, its EMA and the checkpoints stay plain
        trainer.net = torch.compile(trainer.net)
    if rt.is_main:
        held_out = {"held_out_files": ds.held_out_files} if hasattr(ds, "held_out_files") else {}
        write_run_files(run_dir, cfg, rt, {**held_out, "init_from": init_from, "grow_depth": grow_depth, "data_root": data_root,
                                            "workers": workers, "max_seconds": max_seconds, "compiled": compiled})
    recorder = Recorder(trainer, ds, run_dir, progress, resume, show_bar, log, data_root, callbacks)
    order = SampleOrder(len(ds), cfg.data_seed, shuffle=not isinstance(ds, EventDataset))
    result, began = None, _now()
    stream = batches(ds, order, progress.data_position, cfg, rt, trainer.draw_spec(), workers)
    try:
        while progress.step < cfg.steps:
            asked = time.perf_counter()
            batch = next(stream)
            waited = time.perf_counter() - asked
            result = trainer.step(batch, progress.step)
            progress = progress.advance(cfg.batch_size, result.skipped)
            recorder.after_step(result, progress, waited)
            if max_seconds is not None and progress.step < cfg.steps and out_of_time(_now() - began >= max_seconds, rt):
                log(f"step {progress.step}: --max-minutes reached after {_now() - began:.0f} s; "
                    f"resume with --resume to go on to step {cfg.steps}")
                recorder.stop(progress)
                break
    finally:
        stream.close()  # ends the data workers
    recorder.close()
    if rt.distributed:
        dist.barrier()  # rank 0's last checkpoint is on disk before anyone returns
    return TrainResult(run_dir, progress.step, recorder.saved or latest_checkpoint(run_dir), progress.skipped_steps,
                       result.loss if result else math.nan, rt.rank)


def _now() -> float:
    """The time box's clock (its own name, so that a test can step it)."""
    return time.monotonic()


def _silent(msg: str) -> None:
    pass


def _to_stderr(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


__all__ = ["TrainResult", "setup_training", "train"]
