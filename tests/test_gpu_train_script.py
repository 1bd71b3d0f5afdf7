"""scripts/gpu_train.py: the scheduler of a time-boxed GPU run. What runs on the device is the library's own
CLI (tested elsewhere); here, the pieces of its own logic: the rate it sizes the cooldown from, the
input wait it reports, and the pack that must come back in parts of at most 15 MiB and rebuild bit for bit."""
import importlib.util
import json
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rate_is_read_from_the_newest_logged_windows(tmp_path):
    gpu_train = load()
    (tmp_path / "config.json").write_text(json.dumps({"batch_size": 256}))
    rows = [{"step": 50 * i, "clips_per_s": 512.0 * i} for i in range(1, 9)] + [{"step": 400, "samples": "x"}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    step, rate = gpu_train.last_rate(tmp_path)
    assert step == 400 and rate == sum(512.0 * i for i in range(4, 9)) / 5 / 256


def test_input_wait_is_the_mean_of_the_newest_logged_windows(tmp_path):
    gpu_train = load()
    rows = [{"step": 50 * i, "input_wait_frac": 0.1 * i} for i in range(1, 8)] + [{"step": 400, "val_x0": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert abs(gpu_train.input_wait(tmp_path) - sum(0.1 * i for i in range(3, 8)) / 5) < 1e-4
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.1}) + "\n")  # a run from before the key
    assert gpu_train.input_wait(tmp_path) is None


def test_pack_splits_into_parts_that_rebuild_the_files(tmp_path, monkeypatch):
    gpu_train = load()
    monkeypatch.setattr(gpu_train, "PART_BYTES", 1000)
    src = tmp_path / "src"
    (src / "export").mkdir(parents=True)
    payload = bytes(range(256)) * 10
    (src / "export" / "weights.bin").write_bytes(payload)
    (src / "metrics.jsonl").write_text("{}\n")
    out = tmp_path / "out"
    out.mkdir()
    log = open(tmp_path / "log.txt", "w")
    gpu_train.pack(out, [src / "export", src / "metrics.jsonl", src / "missing"], log)
    parts = sorted(out.glob("pack.tar.part-*"))
    assert len(parts) >= 3 and all(p.stat().st_size <= 1000 for p in parts)
    (tmp_path / "whole.tar").write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(tmp_path / "whole.tar") as tar:
        tar.extractall(tmp_path / "back", filter="data")
    assert (tmp_path / "back" / "export" / "weights.bin").read_bytes() == payload
    assert (tmp_path / "back" / "metrics.jsonl").read_text() == "{}\n"
