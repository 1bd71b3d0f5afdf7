"""What a training run leaves in its folder: the resolved config, how it was launched, metrics.jsonl,
checkpoints, and whatever its callbacks write (sample clips, validation figures).

Callbacks (`Callback`) are how layers above training add work at chosen steps without training
importing them: `avgen.api.training` adds sample clips scored by the evaluation suite and the
held-out denoising error. Each returns figures for metrics.jsonl; a callback that fails is logged
and training goes on (its step's checkpoint is already on disk)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from avgen.train.checkpoint import list_checkpoints
from avgen.train.config import TrainConfig
from avgen.train.runtime import Runtime
from avgen.train.state import Progress, StepResult, Trainer
from avgen.util import atomic_write_text, dumps, one_line, package_versions

CONFIG_FILE = "config.json"  # the resolved TrainConfig of the run
RUN_FILE = "run.json"  # how it was launched (device, processes, paths, versions): not part of the result
METRICS_FILE = "metrics.jsonl"


def read_run_config(run_dir) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no {CONFIG_FILE}); start one with `avgen train`")
    d = json.loads(path.read_text())
    for key in ("count_cond", "timeline_cond"):  # inputs added after the run began are off in it, as in weights
        d.get("model", {}).setdefault(key, False)
    d.setdefault("holdout", 0.0)  # folder runs from before the held-out split trained on every file
    return TrainConfig.from_dict(d)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    exists = (run_dir / CONFIG_FILE).exists() or bool(list_checkpoints(run_dir))
    if resume and not run_dir.is_dir():
        raise FileNotFoundError(f"--resume: run folder {run_dir} does not exist")
    if not resume and exists:
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")


def write_run_files(run_dir: Path, cfg: TrainConfig, rt: Runtime, extra: dict) -> None:
    """The resolved config (what decides the result) and how the run was launched (what does not)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json() + "\n")
    info = {"device": str(rt.device), "world_size": rt.world_size, "versions": package_versions(),
            **{k: v if v is None or isinstance(v, (bool, int, float, list)) else str(v) for k, v in extra.items()}}
    atomic_write_text(run_dir / RUN_FILE, dumps(info) + "\n")


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line, each with the step it describes.

    On resume, lines a killed run wrote after its last checkpoint are dropped: those steps are
    about to be trained again and would otherwise appear twice.
    """

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines() if self._step_of(line) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    @staticmethod
    def _step_of(line: str) -> float:
        """The step a line describes; a line torn by a kill mid-write counts as after any step."""
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return math.inf

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(dumps(record, indent=None) + "\n")


class Window:
    """Running means of the logged quantities between two log lines."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count, self.skipped, self.started, self.waited = 0, 0, time.perf_counter(), 0.0

    def add(self, r: StepResult, waited: float = 0.0) -> None:
        self.waited += waited
        if r.skipped:
            self.skipped += 1
            return
        self.count += 1
        for k, v in {"loss": r.loss, "grad_norm": r.grad_norm, **r.stats}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def summary(self, clips: int) -> dict:
        out = {k: v / max(1, self.count) for k, v in self.sums.items()}
        elapsed = max(1e-9, time.perf_counter() - self.started)
        out["clips_per_s"] = clips / elapsed
        # the share of the time spent waiting for the next batch: with workers, near 0 unless the step
        # outruns them (input-bound); without, the cost of building batches in the training process
        out["input_wait_frac"] = round(min(1.0, self.waited / elapsed), 4)
        return out



class Callback(Protocol):
    """Work at chosen steps of a run, on its main process only; what it returns goes to metrics.jsonl.

    `start` is called once the run's trainer and dataset exist; it returns False when the callback has
    nothing to do in this run (e.g. no test split to validate on), having said why through `log`.
    `every(cfg)` is the callback's period in steps (0 = never)."""

    name: str

    def every(self, cfg: TrainConfig) -> int: ...

    def start(self, trainer: Trainer, ds, run_dir: Path, data_root, log) -> bool: ...

    def __call__(self, trainer: Trainer, step: int) -> dict: ...


class Recorder:
    """What follows each step on rank 0: progress bar, metrics.jsonl, checkpoints, and the callbacks."""

    def __init__(self, trainer: Trainer, ds, run_dir: Path, start: Progress, resume: bool, show_bar: bool, log,
                 data_root=None, callbacks: tuple[Callback, ...] = ()):
        self.trainer, self.cfg, self.run_dir, self.log = trainer, trainer.cfg, run_dir, log
        self.main = trainer.rt.is_main
        self.metrics = MetricsLog(run_dir / METRICS_FILE, start.step if resume else None, self.main)
        wanted = [cb for cb in callbacks if self.main and cb.every(self.cfg) > 0]
        self.callbacks = [cb for cb in wanted if cb.start(trainer, ds, run_dir, data_root, log)]
        self.window, self.saved, self.last = Window(), None, None
        self.bar = tqdm(total=self.cfg.steps, initial=start.step, disable=not show_bar, unit="step",
                        dynamic_ncols=True)

    def after_step(self, result: StepResult, progress: Progress, waited: float = 0.0) -> None:
        """`waited`: seconds the step waited for its batch."""
        cfg, step = self.cfg, progress.step
        self.window.add(result, waited)
        self.last = result
        self.bar.update()
        if result.skipped:
            self.log(f"step {step}: non-finite loss {result.loss} / grad norm {result.grad_norm}; update "
                     f"skipped ({progress.skipped_steps} so far)")
            self.metrics.write({"step": step, "skipped": True, "loss": result.loss, "grad_norm": result.grad_norm})
        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
            self.log_window(result, progress)
        if self.main and (step % cfg.ckpt_every == 0 or last):
            self.saved = self.trainer.save(self.run_dir, progress)
        for cb in self.callbacks:
            if step % cb.every(cfg) == 0:
                self.metrics.write({"step": step, **self.run_callback(cb, step)})

    def run_callback(self, cb: Callback, step: int) -> dict:
        """A callback's figures; its failure is logged ({"<name>_error": ...}) and training goes on, rather
        than ending a long run over a side output (this step's checkpoint is already on disk)."""
        try:
            return cb(self.trainer, step)
        except Exception as e:  # noqa: BLE001 - any failure of a side output, reported in the log
            why = one_line(str(e) or type(e).__name__)
            self.log(f"step {step}: {cb.name} failed ({why}); training goes on")
            return {f"{cb.name}_error": why}

    def log_window(self, result: StepResult, progress: Progress) -> None:
        summary = self.window.summary(self.cfg.batch_size * (self.window.count + self.window.skipped))
        self.bar.set_postfix(loss=f"{summary.get('loss', math.nan):.4f}", clips_s=f"{summary['clips_per_s']:.1f}")
        self.metrics.write({"step": progress.step, "lr": result.lr, "skipped_steps": progress.skipped_steps,
                            "samples_seen": progress.data_position, **summary})
        self.window.reset()

    def stop(self, progress: Progress) -> None:
        """Stopping early: the step just taken is logged and checkpointed (if it was not already)."""
        if progress.step % self.cfg.log_every:
            self.log_window(self.last, progress)
        if self.main and progress.step % self.cfg.ckpt_every:
            self.saved = self.trainer.save(self.run_dir, progress)

    def close(self) -> None:
        self.bar.close()


__all__ = ["CONFIG_FILE", "METRICS_FILE", "RUN_FILE", "Callback", "MetricsLog", "Recorder", "Window",
           "check_run_dir", "read_run_config", "write_run_files"]

