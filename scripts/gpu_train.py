"""One time-boxed run on a lent GPU: CUDA checks of the shipped weights, then GPU training, packed for the trip back.

    python3 scripts/gpu_train.py --out $OUT [--budget-s 570] [--workers 14] [--device cuda] [--set KEY=VALUE ...]

Made for the device machine (one H200, 16 cores), whose whole lease is a few minutes, so every phase
is bounded by the clock and a failing phase does not stop the next one:

1. `scripts/gpu_check.py --weights weights/avgen`: CPU fp32 against CUDA bf16 (velocity, events,
   seconds per clip), then `avgen bench --device cuda --captured` (the loop's utilisation on the
   GPU; batch 1 eager and with the step captured as a CUDA graph).
2. Training, in two `avgen train --compile` calls on the same run folder, the loss's noise drawn on the
   GPU (`noise_on_device`; a worker then sends a quarter of the bytes and builds 1.65x the clips/s):
   a. the shipped weights grown to `--grow-depth` blocks (the new ones start as the identity), a big
      batch at a constant LR, for a share of the time left (`--max-minutes`);
   b. `--resume` with a linear cooldown (lr_schedule=wsd) sized from the rate that (a) measured, so
      that it ends inside the time left.
   The digits-gpu preset logs the EMA weights' held-out denoising error every 250 steps
   (`val_x0_*` in metrics.jsonl), so a run that starts to memorise its training recordings shows it.
3. The newest checkpoint exported (EMA weights, fp16), packed with the run's config, metrics and the
   check figures into one tar split into 15 MiB parts (the device returns at most 8 files of 16 MiB):
   `cat OUT/pack.tar.part-* | tar x` rebuilds it.

Everything it runs is the library's own CLI; the script only schedules. `--device cpu` with a small
budget rehearses the whole sequence on a machine without a GPU.

How it was called on the device (2026-11-30, commit a1dbde2) (the machine has torch but not diffusers, and no data): an
ignored folder `.dev/` carried the wheels of diffusers 0.42.1 and importlib_metadata
(`pip download --no-deps --only-binary=:all: --python-version 3.12 ...`) and the data as one
`data.tar.xz` (15 MB; the checkout and it must stay under the 64 MiB that travels), then

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .dev/*.whl
    export PYTHONPATH=$PWD:/tmp/site AVGEN_DATA=/tmp/data/data
    python3 -c "import tarfile; tarfile.open('.dev/data.tar.xz').extractall('/tmp/data')"
    python3 scripts/gpu_train.py --out $OUT --budget-s 540 --workers 14
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVGEN = [sys.executable, "-m", "avgen"]
PART_BYTES = 15 * 2 ** 20


class Clock:
    def __init__(self, budget_s: float):
        self.start, self.budget = time.monotonic(), budget_s

    def used(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.used()


def run(cmd: list[str], log, timeout: float) -> int:
    """Run one phase with its output appended to the log; returns its exit status (124 on timeout)."""
    timeout = max(1.0, timeout)
    log.write(f"\n$ {' '.join(map(str, cmd))}   (timeout {timeout:.0f} s)\n")
    log.flush()
    began = time.monotonic()
    try:
        rc = subprocess.run(list(map(str, cmd)), stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                            cwd=ROOT).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    log.write(f"[exit {rc} after {time.monotonic() - began:.1f} s]\n")
    log.flush()
    return rc


def last_rate(run_dir: Path) -> tuple[int, float]:
    """(step reached, optimizer steps per second over the newest logged windows) from metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "clips_per_s" in r]
    cfg = json.loads((run_dir / "config.json").read_text())
    recent = rows[-5:]
    rate = sum(r["clips_per_s"] for r in recent) / len(recent) / cfg["batch_size"]
    return rows[-1]["step"], rate


def input_wait(run_dir: Path) -> float | None:
    """The mean share of time the step waited for its batch over the newest logged windows (near 0: the
    device sets the pace; near 1: the data workers do)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    waits = [r["input_wait_frac"] for r in rows if "input_wait_frac" in r][-5:]
    return round(sum(waits) / len(waits), 4) if waits else None


def pack(out: Path, members: list[Path], log) -> None:
    """members -> out/pack.tar.part-00, -01, ... (each at most 15 MiB)."""
    tar_path = out.parent / f"{out.name}-pack.tar"
    with tarfile.open(tar_path, "w") as tar:
        for m in members:
            if m.exists():
                tar.add(m, arcname=m.name)
    with open(tar_path, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(PART_BYTES), b"")):
            (out / f"pack.tar.part-{i:02d}").write_bytes(chunk)
    log.write(f"packed {[m.name for m in members if m.exists()]} into {tar_path.stat().st_size} bytes\n")
    tar_path.unlink()


@contextlib.contextmanager
def gpu_load(path: Path, log):
    """`nvidia-smi dmon` (SM and memory load every 10 s) into `path` while the block runs, if there is a GPU."""
    if not shutil.which("nvidia-smi"):
        yield
        return
    run(["df", "-h", "/dev/shm", "/tmp"], log, 10)
    with open(path, "w") as out:
        dmon = subprocess.Popen(["nvidia-smi", "dmon", "-s", "um", "-d", "10"], stdout=out, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            dmon.terminate()
            dmon.wait(timeout=10)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budget-s", type=float, default=570.0, help="wall-clock seconds for everything")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--compile-s", type=float, default=45.0,
                   help="kept back in the cooldown's sizing for compiling again (phase b is a new process)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="train eagerly (default: `avgen train --compile`, falling back to eager if it fails)")
    p.add_argument("--work", type=Path, default=Path("/tmp/avgen-device"))
    p.add_argument("--grow-depth", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--constant-share", type=float, default=0.6, help="share of the training time at the peak LR")
    p.add_argument("--check-s", type=float, default=75.0, help="time for the gpu_check phase")
    p.add_argument("--bench-s", type=float, default=150.0, help="time for the bench phase (0 = skip)")
    p.add_argument("--reserve-s", type=float, default=45.0, help="kept back for export and packing")
    p.add_argument("--min-train-s", type=float, default=300.0, help="the checks stop early to leave this for training")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="more training config overrides for the run, e.g. augment_speed=0.15 (repeatable)")
    args = p.parse_args(argv)
    clock = Clock(args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.work.exists():
        shutil.rmtree(args.work)
    run_dir, checks = args.work / "run", args.work / "checks"
    checks.mkdir(parents=True)
    summary: dict = {"device": args.device, "budget_s": args.budget_s}
    with open(args.out / "log.txt", "a") as log:
        log.write(f"gpu_train.py {vars(args)}\n")
        if shutil.which("nvidia-smi"):
            run(["nvidia-smi"], log, 15)

        # 1. checks of the shipped weights on this device
        summary["gpu_check_rc"] = run([sys.executable, "scripts/gpu_check.py", "--weights", "weights/avgen",
                                       "--out", checks], log, min(args.check_s, clock.left() - args.min_train_s))
        if args.bench_s > 0:
            summary["bench_rc"] = run(AVGEN + ["bench", "--device", args.device, "--weights", "weights/avgen",
                                               "--captured", "--json", checks / "bench.json"], log,
                                      min(args.bench_s, clock.left() - args.min_train_s))

        # 2a. grow, then train at the peak LR (dmon samples the GPU's load meanwhile)
        with gpu_load(checks / "dmon.txt", log):
            # a failed start falls back: without compilation, then in this process's data path
            ladder = [(args.workers, args.compile), (args.workers, False), (0, False)]
            ladder = [x for i, x in enumerate(ladder) if x not in ladder[:i]]
            for attempt, (workers, compiled) in enumerate(ladder):
                train_s = clock.left() - args.reserve_s
                first_min = max(30.0, args.constant_share * train_s - 20) / 60  # ~20 s of start-up per call
                summary[f"train_a_rc{attempt}"] = run(AVGEN + [
                    "train", "--dataset", "talking-digits", "--preset", "digits-gpu", "--out", run_dir,
                    "--init-from", "weights/avgen", "--grow-depth", args.grow_depth,
                    *[x for kv in (f"batch_size={args.batch_size}", f"lr={args.lr}", "lr_schedule=constant",
                                   "warmup_steps=300", "ema_decay=0.9995", "data_seed=2", "sample_every=0",
                                   "ckpt_every=2000", "keep_last=2", "log_every=50", "noise_on_device=true",
                                   *args.overrides)
                      for x in ("--set", kv)],
                    "--steps", 1_000_000, "--max-minutes", f"{first_min:.3f}", "--workers", workers,
                    *(["--compile"] if compiled else []), "--device", args.device, "--no-progress"], log,
                    clock.left() - args.reserve_s)
                summary.update(workers=workers, compiled=compiled)
                summary[f"train_a_rung{attempt}"] = {"workers": workers, "compiled": compiled}
                if list((run_dir / "checkpoints").glob("*.safetensors")) or clock.left() < args.reserve_s + 90:
                    break
                shutil.rmtree(run_dir, ignore_errors=True)

            # 2b. cooldown sized from the measured rate
            try:
                step, rate = last_rate(run_dir)
                left = clock.left() - args.reserve_s - 25 - (args.compile_s if compiled else 0)  # its start-up
                decay = max(10, int(0.9 * rate * left))
                summary.update(step_a=step, steps_per_s_a=round(rate, 2), decay_steps=decay,
                               input_wait_frac_a=input_wait(run_dir))
                summary["train_b_rc"] = run(AVGEN + [
                    "train", "--out", run_dir, "--resume", "--steps", step + decay, "--set", "lr_schedule=wsd",
                    "--set", f"decay_steps={decay}", "--set", f"warmup_steps={min(300, step)}",
                    "--max-minutes", f"{max(0.2, left / 60):.3f}", "--workers", workers,
                    *(["--compile"] if compiled else []), "--device", args.device, "--no-progress"], log,
                    clock.left() - args.reserve_s + 10)
                summary["step_b"], summary["steps_per_s_b"] = [round(x, 2) for x in last_rate(run_dir)]
                summary["input_wait_frac_b"] = input_wait(run_dir)
            except (OSError, ValueError, KeyError, IndexError, ZeroDivisionError) as e:
                log.write(f"cooldown not run: {e!r}\n")
                log.flush()

        # 3. export and pack
        export = args.work / "export"
        rc = run(AVGEN + ["export", run_dir, "--out", export, "--dtype", "float16"], log, 60)
        if rc != 0:  # fp16 outside the default tolerance: still the only size that travels; measured here
            rc = run(AVGEN + ["export", run_dir, "--out", export, "--dtype", "float16", "--fp16-tolerance", "1",
                              "--force"], log, 60)
        summary["export_rc"], summary["seconds_used"] = rc, round(clock.used(), 1)
        (checks / "summary.json").write_text(json.dumps(summary, indent=2))
        log.write(json.dumps(summary) + "\n")
        members = [export, checks] + [run_dir / n for n in ("config.json", "run.json", "metrics.jsonl")]
        pack(args.out, members, log)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
