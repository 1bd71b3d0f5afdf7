"""scripts/gpu_check.py: the device check prepared for a GPU session. Its CPU half runs here, so a
change to the pipeline's internals that it calls (predict_x0, the prompt states) is caught on CPU."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_cpu_half_runs_and_reports(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--steps", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for sigma in (0.9, 0.5):
        norms = report[f"velocity_norm_cpu_t{sigma}"]
        assert set(norms) == {"video", "audio"} and all(v > 0 for v in norms.values())
    assert report["ok"] and report["cpu_seconds_per_clip"] > 0 and set(report["events_cpu"]) == {"video", "audio"}
