"""`avgen bench` runs end to end on a tiny config and reports every figure (speed is not asserted:
benchmarks are measurements, not timed tests)."""
from __future__ import annotations

import json
import math

import pytest

from avgen.cli import main
from tests.demo_helpers import tiny_weights  # noqa: F401  (fixture)


@pytest.mark.slow
def test_bench_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("gemm_gflops", "loop_gflops", "utilization", "generate_seconds", "clip_seconds", "rtf",
                "peak_mem_mb", "train_clips_per_s", "train_utilization", "flops_per_step"):
        assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, key
    assert set(r["batches"]) == {"1", "2"}
    for key in ("matmul_seconds", "matmul_gflops", "matmul_utilization", "matmul_share_of_loop"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["matmul_calls"] > 0 and 0 < r["matmul_shapes"] <= r["matmul_calls"]
    assert abs(r["rtf"] - r["generate_seconds"] / r["clip_seconds"]) < 1e-3
    assert set(r["scaling"]["seconds_by_duration"]) == {"1.5", "3.0", "6.0"}  # 6 s: made in windows
    assert r["input_dataset"] == "shapes" and r["input_clips_per_s"] > 0 and r["input_clips_per_s_device_noise"] > 0
    assert 0 < r["input_mb_per_clip_device_noise"] < r["input_mb_per_clip"]  # the noise stays off the link
    out = capsys.readouterr().out
    assert "gemm ceiling" in out and "training input, one worker" in out


def test_input_figures_time_the_presets_own_data_with_frames_packed(data_root):
    from avgen import bench

    r = bench.input_figures(bench.BenchConfig(train_steps=1), data_root)
    assert r["input_dataset"] == "talking-digits" and r["input_frames_packed"] is True and r["input_batch"] == 32
    # talking digits at 3 s: frames 48 x 32 x 32 uint8 + audio 24,000 float32 + slots, then the noise 48 x 1,540 float32
    assert r["input_mb_per_clip_device_noise"] == pytest.approx((49152 + 96000 + 48 * 8) / 1e6, abs=1e-3)
    assert r["input_mb_per_clip"] - r["input_mb_per_clip_device_noise"] == pytest.approx(48 * 1540 * 4 / 1e6, abs=1e-3)


@pytest.mark.slow
def test_bench_captured_reports_the_compiled_batch_1_beside_eager(tmp_path, capsys, monkeypatch):
    from avgen import bench

    report = bench.run_bench(bench.BENCH_PRESETS["tiny"], device="cpu", log=lambda m: None, captured=True)
    c = report["captured"]
    assert c["mode"] == "default" and "error" not in c, c
    assert c["generate_seconds"] > 0 and c["first_call_seconds"] > 0 and c["step_seconds"] > 0
    # eager and compiled alternate, one ratio per round, in the same run as the eager figures
    assert len(c["speedup_by_round"]) == bench.BENCH_PRESETS["tiny"].repeats and c["eager_loop_seconds"] > 0
    assert c["speedup"] == pytest.approx(sorted(c["speedup_by_round"])[len(c["speedup_by_round"]) // 2], abs=1e-3)
    # the compiled loop's rate from the eager FLOP count and the same run's ceiling
    assert c["loop_gflops"] == pytest.approx(report["flops_per_step"] / c["step_seconds"] / 1e9, rel=1e-2)
    assert c["utilization"] == pytest.approx(c["loop_gflops"] / report["gemm_gflops"], rel=1e-2)
    assert c["eager_utilization"] == pytest.approx(c["utilization"] * c["loop_seconds"] / c["eager_loop_seconds"], rel=2e-2)
    assert "batch 1: captured" in bench.format_table(report)
    monkeypatch.setattr(bench.torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no compiler")))
    pipe = bench.make_pipeline(bench.BENCH_PRESETS["tiny"], bench.torch.device("cpu"))
    eager = pipe.transformer
    failed = bench.captured_figures(pipe, bench.BENCH_PRESETS["tiny"], bench.torch.device("cpu"))
    assert failed == {"mode": "default", "error": "RuntimeError: no compiler"} and pipe.transformer is eager
    assert "compile failed" in bench.format_table({**report, "captured": failed})


@pytest.mark.slow
def test_bench_times_the_fast_sampler_beside_the_default_and_captures_it(tiny_weights, tmp_path):
    """Weights with a distilled student: the fast sampler at batch 1 in the same run as the default one
    (loop, decode, speed-up), and compiled beside eager (on CUDA: graph capture)."""
    from avgen import bench
    from tests.test_student import with_student

    report = bench.run_bench(bench.BENCH_PRESETS["tiny"], device="cpu", weights=with_student(tiny_weights, tmp_path),
                             log=lambda m: None, captured=True)
    f = report["fast"]
    assert f["steps"] == 2 and f["decode_seconds"] > 0 and f["loop_seconds"] > 0
    assert f["speedup_vs_default"] == pytest.approx(report["generate_seconds"] / f["generate_seconds"], rel=2e-2)
    assert f["rtf"] == pytest.approx(f["generate_seconds"] / f["clip_seconds"], rel=1e-2)
    c = report["captured_fast"]
    assert "error" not in c and c["generate_seconds"] > 0 and len(c["speedup_by_round"]) > 0
    table = bench.format_table(report)
    assert "batch 1: fast sampler" in table and "batch 1: fast, captured" in table


def test_bench_rejects_unknown_preset(capsys):
    assert main(["bench", "--preset", "huge"]) == 2
    assert "unknown bench preset" in capsys.readouterr().err


def test_fit_exponent():
    from avgen.bench.sampling import fit_exponent
    assert abs(fit_exponent([1, 2, 4, 8], [3, 12, 48, 192]) - 2.0) < 1e-9
