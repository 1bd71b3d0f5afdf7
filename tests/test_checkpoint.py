"""Checkpoints: atomic files, bit-exact full state, pruning, and resume after kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from avgen.train.checkpoint import (CheckpointError, atomic_save, checkpoint_path, latest_checkpoint,
                                    list_checkpoints, prune, read_checkpoint, save_training_state)
from avgen.train.config import preset
from avgen.train.data import SampleOrder, build_dataset, load_batch
from avgen.train.runtime import Runtime
from avgen.train.state import Trainer
from avgen.train.surgery import build_model

CPU = Runtime(torch.device("cpu"))


def make_trainer(seed: int = 0) -> tuple[Trainer, object]:
    cfg = preset("tiny", {"seed": seed})
    ds = build_dataset(cfg)
    return Trainer.create(cfg, build_model(cfg, ds), CPU), ds


def run_steps(trainer: Trainer, ds, start: int, stop: int) -> None:
    order, b = SampleOrder(len(ds), 0, shuffle=False), trainer.cfg.batch_size
    for step in range(start, stop):
        trainer.step(load_batch(ds, order, range(step * b, (step + 1) * b), trainer.cfg.seed, CPU.device, trainer.cfg.codec.frames_per_token), step)


def save(trainer: Trainer, run_dir, step: int, keep_last: int = 3) -> Path:
    progress = {"step": step, "data_position": step * trainer.cfg.batch_size, "skipped_steps": 0}
    return save_training_state(run_dir, model=trainer.model, ema=trainer.ema, optimizer=trainer.optimizer,
                               scheduler=trainer.scheduler, progress=progress, config=trainer.cfg.to_dict(),
                               keep_last=keep_last)


def load(trainer: Trainer, path) -> dict:
    return trainer.load(path)


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for name, x in a.model.state_dict().items():
        assert torch.equal(x, b.model.state_dict()[name]), name
    for name, x in a.ema.state_dict().items():
        assert torch.equal(x, b.ema.state_dict()[name]), f"ema.{name}"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for index, per_param in sa["state"].items():
        for key, value in per_param.items():
            assert torch.equal(value, sb["state"][index][key]), f"optimizer {index}.{key}"
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


def test_atomic_save_round_trip(tmp_path):
    tensors = {"a": torch.randn(3, 4), "step": torch.tensor(7.0), "bytes": torch.arange(5, dtype=torch.uint8)}
    meta = {"format": 1, "progress": {"step": 3}, "nested": [1, 2.5, None, "x"]}
    path = atomic_save(tensors, meta, tmp_path / "checkpoints" / "step-00000003.safetensors")
    loaded, loaded_meta = read_checkpoint(path)
    assert loaded_meta == meta
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_full_state_round_trip_continues_bit_for_bit(tmp_path):
    trained, ds = make_trainer()
    run_steps(trained, ds, 0, 3)
    path = save(trained, tmp_path, 3)
    restored, _ = make_trainer(seed=1)  # different initial weights: everything must come from the file
    restored.cfg = trained.cfg  # ... but the same per-sample draws in the steps that follow
    meta = load(restored, path)
    assert meta["progress"] == {"step": 3, "data_position": 12, "skipped_steps": 0}
    assert meta["train_config"] == trained.cfg.to_dict()
    assert_same_state(trained, restored)
    run_steps(trained, ds, 3, 5)
    run_steps(restored, ds, 3, 5)
    assert_same_state(trained, restored)


def test_global_rng_state_is_restored(tmp_path):
    trainer, _ = make_trainer()
    path = save(trainer, tmp_path, 1)
    expected = torch.rand(4)
    torch.rand(100)  # move the global stream on
    load(trainer, path)
    assert torch.equal(torch.rand(4), expected)


def test_prune_keeps_newest_and_removes_torn_files(tmp_path):
    trainer, _ = make_trainer()
    torn = checkpoint_path(tmp_path, 99).with_name(".step-00000099.safetensors.12345.tmp")
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"half a checkpoint")  # what a writer killed mid-save leaves
    assert latest_checkpoint(tmp_path) is None  # never mistaken for a checkpoint
    for step in (2, 4, 6, 8):
        save(trainer, tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000006.safetensors", "step-00000008.safetensors"]
    assert not torn.exists()
    assert prune(tmp_path, keep_last=1) == [checkpoint_path(tmp_path, 6)]


def test_unreadable_checkpoint_is_named(tmp_path):
    trainer, _ = make_trainer()
    path = save(trainer, tmp_path, 2)
    path.write_bytes(path.read_bytes()[:1000])  # truncated (e.g. copied off a full disk)
    with pytest.raises(CheckpointError, match=str(path)):
        load(trainer, path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")


def test_checkpoint_of_another_model_is_refused(tmp_path):
    trainer, ds = make_trainer()
    path = save(trainer, tmp_path, 2)
    narrower = preset("tiny", ["model.hidden_size=32"])
    other = Trainer.create(narrower, build_model(narrower, ds), CPU)
    with pytest.raises(CheckpointError, match="does not fit"):
        load(other, path)


def test_checkpoint_of_another_activation_is_refused_before_anything_is_loaded(tmp_path):
    """The activation changes no tensor's shape, so the strict load cannot see it: a checkpoint trained
    with the tanh GELU (written before the key existed, or named) does not resume under the exact one."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    trainer, ds = make_trainer()  # the tiny preset: the exact GELU
    path = save(trainer, tmp_path, 2)
    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()["avgen"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    del meta["model_config"]["mlp_activation"]  # as checkpoints were written before the key existed
    old = tmp_path / "old.safetensors"
    save_file(tensors, old, metadata={"avgen": json.dumps(meta)})
    fresh, _ = make_trainer(seed=1)
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="trained with mlp_activation='gelu_tanh'.*model.mlp_activation=gelu_tanh"):
        load(fresh, old)
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in before.items())  # nothing half-loaded
    tanh_cfg = preset("tiny", ["model.mlp_activation=gelu_tanh"])
    tanh = Trainer.create(tanh_cfg, build_model(tanh_cfg, ds), CPU)
    load(tanh, old)  # the activation it was trained with: resumes
    assert_same_state(tanh, trainer)


# ---------------------------------------------------------------------------- kill -9 and resume
TRAIN = [sys.executable, "-c", "import sys; from avgen.cli import main; sys.exit(main())", "train", "--preset", "tiny",
         "--device", "cpu", "--no-progress", "--set", "steps=16", "--set", "ckpt_every=2", "--set", "keep_last=50"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs use the same thread count (same float reductions)


def _train_cli(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*TRAIN, "--out", str(out), *extra], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a `_train_cli` run to end (its stderr read meanwhile, so a full pipe cannot stall it);
    its stderr. A run still going after `timeout` s is killed and the test fails, saying so."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        said = proc.communicate()[1]
        pytest.fail(f"avgen {' '.join(proc.args[3:])} still running after {timeout} s; stderr: {said!r}")


def _final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors, meta = read_checkpoint(checkpoint_path(run_dir, 16))
    assert meta["progress"]["step"] == 16
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_matches_uninterrupted_run(tmp_path):
    reference = _train_cli(tmp_path / "reference")
    killed = _train_cli(tmp_path / "killed")
    deadline = time.monotonic() + 300  # 16 tiny steps take seconds; this is for a stalled run, not a slow one
    while not checkpoint_path(tmp_path / "killed", 4).exists():  # well into the run, after some checkpoints
        assert killed.poll() is None, killed.stderr.read()
        if time.monotonic() > deadline:
            killed.kill()
            reference.kill()
            reference.wait()
            pytest.fail(f"no checkpoint at step 4 after 300 s; the run's stderr: {killed.communicate()[1]!r}")
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not checkpoint_path(tmp_path / "killed", 16).exists(), "the run finished before it was killed"
    interrupted_at = int(latest_checkpoint(tmp_path / "killed").name[5:13])
    resumed = _train_cli(tmp_path / "killed", "--resume")
    said = _finish(resumed)
    assert resumed.returncode == 0, said
    assert "resumed from" in said
    said = _finish(reference)
    assert reference.returncode == 0, said

    expected, got = _final_tensors(tmp_path / "reference"), _final_tensors(tmp_path / "killed")
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"resumed after step {interrupted_at}: {different[:5]} differ"
    # the log has every step once: lines the killed run wrote after its last checkpoint were dropped

    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))
