"""Multi-process training: 2 CPU processes (torchrun, gloo) with global batch B reach the same
weights as 1 process with global batch B, because every random draw is keyed by the global
sample index (or, with noise_on_device, every rank slices the same global draw) and the per-rank
mean losses average to the global mean. The 2-process run builds its
batches in data workers (`--workers 1`), which must not change what each rank trains on."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from avgen.train.checkpoint import checkpoint_path, read_checkpoint

AVGEN = Path(sys.executable).with_name("avgen")  # the console script, which torchrun runs as a file
# lr = the CPU presets' 3e-4 (tiny's 1e-3 is for speed): what differs between 1 and 2 processes is the
# order of float32 sums in the gradient all-reduce, which Adam turns into weight differences ~ lr.
TRAIN = ["train", "--preset", "tiny", "--device", "cpu", "--no-progress", "--set", "steps=3", "--set", "batch_size=4",
         "--set", "lr=3e-4"]


def _run(argv: list[str], temp: Path) -> None:
    """`argv` as a subprocess, with its temp folder in `temp` (torchrun's agent leaves its log folder
    `torchelastic_*` there)."""
    temp.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(temp)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not AVGEN.is_file(), reason=f"console script {AVGEN} not installed (pip install -e .)")
@pytest.mark.parametrize("noise", ["per_sample", "on_device"])
def test_two_gloo_processes_match_one_process(tmp_path, noise):
    train = TRAIN + ["--set", f"noise_on_device={noise == 'on_device'}"]  # on_device: each rank slices one draw
    _run([str(AVGEN), *train, "--out", str(tmp_path / "one")], tmp_path / "tmp")
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(AVGEN), *train,
          "--workers", "1", "--out", str(tmp_path / "two")], tmp_path / "tmp")  # each rank's slices built by a data worker
    one, meta_one = read_checkpoint(checkpoint_path(tmp_path / "one", 3))
    two, meta_two = read_checkpoint(checkpoint_path(tmp_path / "two", 3))
    assert meta_one["progress"] == meta_two["progress"] == {"step": 3, "data_position": 12, "skipped_steps": 0}
    weights = [k for k in one if k.startswith(("model.", "ema."))]
    diff = max(float((one[k].double() - two[k].double()).abs().max()) for k in weights)
    assert diff < 1e-5
    # and the steps did train: the weights moved by far more than the tolerance
    moved = max(float((one[k] - read_checkpoint(checkpoint_path(tmp_path / "one", 2))[0][k]).abs().max())
                for k in weights if k.startswith("model."))
    assert moved > 1e-4  # one Adam step moves a weight by about lr = 3e-4, 30x the tolerance
    assert '"world_size": 2' in (tmp_path / "two" / "run.json").read_text()
