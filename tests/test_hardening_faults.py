"""Faults: a full disk during a checkpoint write (a real, size-limited tmpfs), SIGKILL during a
checkpoint write and mid-step, NaN/inf in a training step, guidance scales at their extremes."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.cli import main
from avgen.train.checkpoint import (CheckpointError, checkpoint_path, list_checkpoints, read_checkpoint,
                                    save_training_state)
from avgen.train.config import preset
from avgen.train.data import SampleOrder, build_dataset, load_batch
from avgen.train.runtime import Runtime
from avgen.train.state import Trainer
from avgen.train.surgery import build_model
from tests.demo_helpers import tiny_weights  # noqa: F401  (fixture)

CPU = Runtime(torch.device("cpu"))
TINY_TRAIN = ["train", "--preset", "tiny", "--device", "cpu", "--no-progress"]


def final_state(run_dir: Path, step: int = 8) -> dict[str, torch.Tensor]:
    tensors, meta = read_checkpoint(checkpoint_path(run_dir, step))
    assert meta["progress"]["step"] == step
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


# ----------------------------------------------------------------------------- a full disk
@pytest.fixture()
def small_disk(tmp_path):
    """A real tmpfs of a given size (MB) at tmp_path/disk; `grow(mb)` remounts it bigger, keeping its files."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = []

    def mount(mb: int) -> Path:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m,mode=0755", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip() or r.returncode}")
        mounted.append(mnt)
        return mnt

    def grow(mb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mb}m", str(mnt)], check=True)

    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    try:
        yield mount, grow
    finally:
        for m in mounted:
            if subprocess.run(["umount", str(m)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(m)], capture_output=True)


def make_trainer(seed: int = 0) -> tuple[Trainer, object]:
    cfg = preset("tiny", {"seed": seed})
    ds = build_dataset(cfg)
    return Trainer.create(cfg, build_model(cfg, ds), CPU), ds


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(small_disk, tmp_path):
    mount, grow = small_disk
    trainer, ds = make_trainer()
    order = SampleOrder(len(ds), 0, shuffle=False)
    trainer.step(load_batch(ds, order, range(4), trainer.cfg.seed, CPU.device, trainer.cfg.codec.frames_per_token), 0)  # AdamW state exists now

    def save(run: Path, step: int) -> Path:
        return save_training_state(run, model=trainer.model, ema=trainer.ema, optimizer=trainer.optimizer,
                                   scheduler=trainer.scheduler, config=trainer.cfg.to_dict(), keep_last=1,
                                   progress={"step": step, "data_position": 4 * step, "skipped_steps": 0})

    size_mb = save(tmp_path / "measure", 2).stat().st_size / 2 ** 20
    run = mount(math.ceil(1.5 * size_mb)) / "run"  # room for one checkpoint, not for a second beside it
    first = save(run, 2)
    saved = first.read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).add_(1.0)  # the state to be saved next differs
    with pytest.raises(CheckpointError) as e:
        save(run, 4)
    msg = str(e.value)
    assert msg.startswith(f"cannot write checkpoint {checkpoint_path(run, 4)}: ") and "No space left on device" in msg
    assert "MB free on that disk" in msg and "\n" not in msg
    assert list_checkpoints(run) == [first] and first.read_bytes() == saved  # intact, bit for bit
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # the torn temp file is gone
    read_checkpoint(first)  # and loadable
    grow(math.ceil(3 * size_mb))
    assert save(run, 4) == checkpoint_path(run, 4) and list_checkpoints(run) == [checkpoint_path(run, 4)]


def test_training_onto_a_full_disk_stops_with_one_line_then_resumes_losing_nothing(small_disk, tmp_path, capsys):
    mount, grow = small_disk
    assert main([*TINY_TRAIN, "--out", str(tmp_path / "reference")]) == 0
    run = mount(12) / "run"
    assert main([*TINY_TRAIN, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"avgen train: error: cannot write checkpoint {checkpoint_path(run, 4)}: ")
    assert "No space left on device" in err[-1]
    assert list_checkpoints(run) == [checkpoint_path(run, 2)]
    assert not list((run / "checkpoints").glob(".*.tmp"))
    grow(40)  # space freed: the run continues from step 2
    assert main([*TINY_TRAIN, "--out", str(run), "--resume"]) == 0
    assert_same(final_state(tmp_path / "reference"), final_state(run))


# ----------------------------------------------------------------------------- killed during a checkpoint write
# A training process whose checkpoint writer stops half-way through the file for step 6 (or whose
# step 7 never ends), so that SIGKILL lands exactly there.
PAUSED_TRAIN = """
import os, sys, time
from pathlib import Path
import avgen.train.checkpoint as ck
import avgen.train.state as state
from avgen.cli import main
where, mark = os.environ["PAUSE_AT"], Path(os.environ["PAUSE_MARK"])
real_save, real_step = ck.save_file, state.Trainer.step

def torn_save(tensors, path, metadata=None):
    real_save(tensors, path, metadata=metadata)
    if where == "checkpoint write" and ".step-00000006." in str(path):
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])  # half of it has reached the disk
        mark.touch()
        time.sleep(600)

def stuck_step(self, batch, step):
    if where == "mid-step" and step == 6:  # 0-based: the 7th step, after checkpoint 6
        mark.touch()
        time.sleep(600)
    return real_step(self, batch, step)

ck.save_file, state.Trainer.step = torn_save, stuck_step
sys.exit(main(sys.argv[1:]))
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # every process the same thread count (same float sums)


def _train_process(out: Path, *extra: str, pause: str = "", mark: Path | None = None) -> subprocess.Popen:
    env = {**ENV, "PAUSE_AT": pause, "PAUSE_MARK": str(mark or out.with_suffix(".mark"))}
    return subprocess.Popen([sys.executable, "-c", PAUSED_TRAIN, *TINY_TRAIN, "--set", "keep_last=3", "--out", str(out),
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_and_mid_step_then_resume_matches(tmp_path):
    reference = _train_process(tmp_path / "reference")
    killed = {where: _train_process(tmp_path / where.replace(" ", "-"), pause=where)
              for where in ("checkpoint write", "mid-step")}
    for where, proc in killed.items():
        mark = (tmp_path / where.replace(" ", "-")).with_suffix(".mark")
        deadline = time.monotonic() + 120
        while not mark.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, f"{where}: never reached the kill point"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    torn = tmp_path / "checkpoint-write" / "checkpoints"
    assert [p.name for p in list_checkpoints(torn.parent)] == ["step-00000002.safetensors", "step-00000004.safetensors"]
    assert len(list(torn.glob(".step-00000006.safetensors.*.tmp"))) == 1  # the torn file never got its name
    assert checkpoint_path(tmp_path / "mid-step", 6).is_file() and not checkpoint_path(tmp_path / "mid-step", 8).exists()

    resumed = [_train_process(tmp_path / where.replace(" ", "-"), "--resume") for where in killed]
    for proc in [reference, *resumed]:
        assert proc.wait() == 0, proc.stderr.read()
    expected = final_state(tmp_path / "reference")
    for where in killed:
        assert_same(expected, final_state(tmp_path / where.replace(" ", "-")))
    assert not list(torn.glob(".*.tmp"))  # the next save swept the torn temp file away


# ----------------------------------------------------------------------------- NaN and inf in a training step
def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    state.update({f"ema.{k}": v.clone() for k, v in trainer.ema.state_dict().items()})
    for i, per_param in trainer.optimizer.state_dict()["state"].items():
        state.update({f"opt.{i}.{k}": torch.as_tensor(v).clone() for k, v in per_param.items()})
    return state


@pytest.fixture(scope="module")
def stepping():
    """A tiny trainer past its first step (AdamW state exists) and `step()`, which runs its next one."""
    trainer, ds = make_trainer()
    order, b, done = SampleOrder(len(ds), 0, shuffle=False), trainer.cfg.batch_size, [0]

    def step():
        i, done[0] = done[0], done[0] + 1
        return trainer.step(load_batch(ds, order, range(i * b, (i + 1) * b), trainer.cfg.seed, CPU.device, trainer.cfg.codec.frames_per_token), i)

    assert not step().skipped
    return trainer, step


@pytest.mark.parametrize("poison", ["NaN gradient", "inf loss"])
def test_a_non_finite_step_changes_nothing_and_is_reported(poison, stepping, monkeypatch):
    from avgen.train import state

    trainer, step = stepping
    before, lr_steps = snapshot(trainer), trainer.scheduler.last_epoch
    if poison == "NaN gradient":  # the loss is finite; one parameter's gradient is not
        hook = next(trainer.model.parameters()).register_hook(lambda g: torch.full_like(g, math.nan))
    else:
        real = state.training_loss
        monkeypatch.setattr(state, "training_loss", lambda *a, **k: (lambda loss, stats: (loss * math.inf, stats))(
            *real(*a, **k)))
    result = step()
    if poison == "NaN gradient":
        hook.remove()
        assert math.isfinite(result.loss) and not math.isfinite(result.grad_norm)
    else:
        monkeypatch.undo()
        assert result.loss == math.inf
    assert result.skipped
    after = snapshot(trainer)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), \
        [k for k in before if not torch.equal(before[k], after[k])][:3]
    assert all(p.grad is None for p in trainer.model.parameters())  # nothing left over for the next step
    assert trainer.scheduler.last_epoch == lr_steps + 1  # the LR schedule follows the step count
    assert not step().skipped  # and training goes on
    assert any(not torch.equal(before[f"model.{k}"], v) for k, v in trainer.model.state_dict().items())


def test_a_nan_from_the_network_is_skipped_logged_and_counted_by_avgen_train(tmp_path, monkeypatch, capsys):
    """The model's forward returns NaN on the second training step only (as a numerically unstable
    batch would): that update is skipped, said on stderr, written to metrics.jsonl, counted in the
    checkpoint, and training goes on."""
    import json

    from avgen.model.transformer import AVDiT

    calls, real = [0], AVDiT.forward

    def nan_on_second_call(self, *a, **k):
        out = real(self, *a, **k)
        calls[0] += 1
        return {m: v * math.nan for m, v in out.items()} if calls[0] == 2 else out
    monkeypatch.setattr(AVDiT, "forward", nan_on_second_call)
    run = tmp_path / "run"
    assert main([*TINY_TRAIN, "--out", str(run), "--set", "steps=3", "--set", "ckpt_every=1", "--set", "keep_last=5"]) == 0
    err = capsys.readouterr().err
    assert "step 2: non-finite loss nan" in err and "update skipped (1 so far)" in err
    assert "(1 non-finite steps skipped)" in err.strip().splitlines()[-1]
    one, two, three = (final_state(run, s) for s in (1, 2, 3))
    assert_same(one, two)  # model, EMA and optimizer state: untouched by step 2
    assert any(not torch.equal(two[k], three[k]) for k in two if k.startswith("model."))  # step 3 trained
    assert read_checkpoint(checkpoint_path(run, 3))[1]["progress"]["skipped_steps"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("skipped")] == [2]


# ----------------------------------------------------------------------------- guidance at its extremes
@pytest.fixture(scope="module")
def tiny_pipe(tiny_weights):
    from avgen.model.pipeline import load_pipeline

    pipe = load_pipeline(tiny_weights, "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_guidance_at_its_extremes_gives_a_valid_clip(tiny_pipe, tmp_path):
    """0 (no prompt at all) and the largest scale the settings table allows (the CLI's and the studio's),
    for each guidance on its own and all together (every sampler at the top): finite frames in [0, 1],
    sound in [-1, 1], an mp4."""
    from avgen.api.generate import GenerateSettings, generate
    from avgen.api.settings import MAX_GUIDANCE as top
    from avgen.data.io import decode_av, write_mp4

    extremes = [("euler", 0.0, 0.0, 0.0), ("euler", 15.0, 15.0, 15.0), ("euler", top, 0.0, 1.0),
                ("euler", 0.0, top, top), ("euler", top, top, top), ("heun", top, top, top), ("dpm++", top, top, top)]
    for sampler, video_g, audio_g, modality in extremes:
        clip = generate(tiny_pipe, GenerateSettings(prompt="3 1", steps=2, sampler=sampler, guidance_scale=video_g,
                                                    audio_guidance_scale=audio_g, modality_scale=modality,
                                                    duration=1.0))[0]
        assert clip.frames.shape == (16, 32, 32, 1) and clip.audio.shape == (8000,)
        assert np.isfinite(clip.frames).all() and 0.0 <= clip.frames.min() and clip.frames.max() <= 1.0
        assert np.isfinite(clip.audio).all() and np.abs(clip.audio).max() <= 1.0, (sampler, video_g, audio_g, modality)
    d = decode_av(write_mp4(clip, tmp_path / "extreme.mp4", scale=1))
    assert len(d.frames) == 16
