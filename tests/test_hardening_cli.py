"""Bad input on the command line: every subcommand, in-process through `avgen.cli.main(argv)`.

Each case must end with exit code 2, exactly one line on stderr naming the command, no traceback,
and nothing written where the command would have put its output.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from avgen.cli import main
from avgen.data.io import write_wav
from tests.demo_helpers import tiny_weights  # noqa: F401  (fixture)

# {w}: good tiny weights   {bad_w}: weights whose safetensors header is garbage   {out}: output path (absent)
# {outdir}: output folder (absent)   {dir}: an existing empty folder   {file}: an existing text file
# {junk}: random bytes named .mp4   {wav}: a one-second tone   {missing}: a path that does not exist
GEN = ["generate", "3", "--weights", "{w}", "--device", "cpu", "--steps", "1"]
CASES = {
    # ------------------------------------------------------------------ the parser itself
    "no command": [],
    "unknown command": ["frobnicate"],
    "unknown flag": [*GEN, "--out", "{out}", "--colour", "red"],
    # ------------------------------------------------------------------ generate: numbers
    "seed not a number": [*GEN, "--out", "{out}", "--seed", "abc"],
    "seed negative": [*GEN, "--out", "{out}", "--seed", "-1"],
    "seed NaN": [*GEN, "--out", "{out}", "--seed", "nan"],
    "seed 2^64": [*GEN, "--out", "{out}", "--seed", str(2 ** 64)],
    "seed 5000 digits": [*GEN, "--out", "{out}", "--seed", "9" * 5000],
    "seed + clips past 2^63": [*GEN, "--out", "{out}", "--seed", str(2 ** 63 - 1), "--num-clips", "2"],
    "steps zero": [*GEN, "--out", "{out}", "--steps", "0"],
    "steps fractional": [*GEN, "--out", "{out}", "--steps", "2.5"],
    "steps huge": [*GEN, "--out", "{out}", "--steps", "1000000"],
    "steps unicode": [*GEN, "--out", "{out}", "--steps", "二"],
    "guidance NaN": [*GEN, "--out", "{out}", "--guidance-scale", "nan"],
    "guidance inf": [*GEN, "--out", "{out}", "--guidance-scale", "inf"],
    "guidance overflows": [*GEN, "--out", "{out}", "--guidance-scale", "1e309"],
    "guidance negative": [*GEN, "--out", "{out}", "--guidance-scale", "-1"],
    "audio guidance text": [*GEN, "--out", "{out}", "--audio-guidance-scale", "loud"],
    "modality scale huge": [*GEN, "--out", "{out}", "--modality-scale", "1e6"],
    "duration zero": [*GEN, "--out", "{out}", "--duration", "0"],
    "duration negative": [*GEN, "--out", "{out}", "--duration", "-3"],
    "duration NaN": [*GEN, "--out", "{out}", "--duration", "nan"],
    "duration an hour": [*GEN, "--out", "{out}", "--duration", "3600"],
    "duration off the token grid": [*GEN, "--out", "{out}", "--duration", "0.01"],
    "clips zero": [*GEN, "--out", "{out}", "--num-clips", "0"],
    "clips huge": [*GEN, "--out", "{out}", "--num-clips", "100000"],
    # ------------------------------------------------------------------ generate: choices and text
    "unknown sampler": [*GEN, "--out", "{out}", "--sampler", "ddim"],
    "unknown device": [*GEN, "--out", "{out}", "--device", "tpu"],
    "unknown label": [*GEN[:1], "3 x", *GEN[2:], "--out", "{out}"],
    "full-width digit": [*GEN[:1], "３", *GEN[2:], "--out", "{out}"],
    "too many labels": [*GEN[:1], " ".join("1" * 1000), *GEN[2:], "--out", "{out}"],
    # ------------------------------------------------------------------ generate: files
    "out is a directory": [*GEN, "--out", "{dir}"],
    "out below a file": [*GEN, "--out", "{file}/clip.mp4"],
    "out not mp4": [*GEN, "--out", "{outdir}/clip.txt"],
    "weights missing": [*GEN[:3], "{missing}", *GEN[4:], "--out", "{out}"],
    "weights a file": [*GEN[:3], "{file}", *GEN[4:], "--out", "{out}"],
    "weights corrupted": [*GEN[:3], "{bad_w}", *GEN[4:], "--out", "{out}"],
    "audio missing": [*GEN, "--out", "{out}", "--audio", "{missing}"],
    "audio a directory": [*GEN, "--out", "{out}", "--audio", "{dir}"],
    "audio random bytes": [*GEN, "--out", "{out}", "--audio", "{junk}"],
    "video random bytes": [*GEN, "--out", "{out}", "--video", "{junk}"],
    "video is sound only": [*GEN, "--out", "{out}", "--video", "{wav}"],
    "audio and video": [*GEN, "--out", "{out}", "--audio", "{wav}", "--video", "{junk}"],
    # ------------------------------------------------------------------ train
    "train without preset": ["train", "--out", "{outdir}"],
    "train unknown preset": ["train", "--preset", "huge", "--out", "{outdir}"],
    "train steps zero": ["train", "--preset", "tiny", "--out", "{outdir}", "--steps", "0"],
    "train steps NaN": ["train", "--preset", "tiny", "--out", "{outdir}", "--steps", "nan"],
    "train unknown key": ["train", "--preset", "tiny", "--out", "{outdir}", "--set", "bogus=1"],
    "train bad value": ["train", "--preset", "tiny", "--out", "{outdir}", "--set", "batch_size=many"],
    "train out is a file": ["train", "--preset", "tiny", "--out", "{file}"],
    "train resume nothing": ["train", "--resume", "--out", "{missing}"],
    "train init from corrupted": ["train", "--preset", "tiny", "--out", "{outdir}", "--init-from", "{bad_w}"],
    "train folder dataset missing": ["train", "--preset", "tiny", "--out", "{outdir}", "--dataset", "folder:{missing}"],
    "train unknown device": ["train", "--preset", "tiny", "--out", "{outdir}", "--device", "tpu"],
    # ------------------------------------------------------------------ export
    "export no run": ["export", "{missing}", "--out", "{outdir}"],
    "export empty folder": ["export", "{dir}", "--out", "{outdir}"],
    "export checkpoint random bytes": ["export", "{dir}", "--checkpoint", "{junk}", "--out", "{outdir}"],
    "export checkpoint a directory": ["export", "{dir}", "--checkpoint", "{dir}", "--out", "{outdir}"],
    "export unknown dtype": ["export", "{dir}", "--out", "{outdir}", "--dtype", "int8"],
    "export tolerance NaN": ["export", "{dir}", "--out", "{outdir}", "--fp16-tolerance", "nan"],
    # ------------------------------------------------------------------ data
    "preview n zero": ["data", "preview", "--dataset", "shapes", "--n", "0", "--out", "{outdir}"],
    "preview scale zero": ["data", "preview", "--dataset", "shapes", "--scale", "0", "--out", "{outdir}"],
    "preview duration NaN": ["data", "preview", "--dataset", "shapes", "--duration", "nan", "--out", "{outdir}"],
    "preview unknown dataset": ["data", "preview", "--dataset", "imagenet", "--out", "{outdir}"],
    "preview folder is a file": ["data", "preview", "--dataset", "folder:{file}", "--out", "{outdir}"],
    "preview unknown split": ["data", "preview", "--dataset", "shapes", "--split", "val", "--out", "{outdir}"],
    "preview data root missing": ["data", "preview", "--data-root", "{missing}", "--out", "{outdir}"],
    "verify root missing": ["data", "verify", "--root", "{missing}"],
    "download without root": ["data", "download"],
    "stats n negative": ["data", "stats", "--dataset", "shapes", "--n", "-5"],
    # ------------------------------------------------------------------ eval
    "eval nothing": ["eval"],
    "eval missing file": ["eval", "{missing}", "--json", "{out}.json"],
    "eval n zero": ["eval", "--dataset", "shapes", "--n", "0", "--json", "{out}.json"],
    "eval shift NaN": ["eval", "--dataset", "shapes", "--shift-ms", "nan", "--json", "{out}.json"],
    "eval threads zero": ["eval", "--dataset", "shapes", "--threads", "0", "--json", "{out}.json"],
    "eval unknown corruption": ["eval", "--dataset", "shapes", "--corrupt", "fire", "--json", "{out}.json"],
    "eval codec round trip of generated clips": ["eval", "--generate", "2", "--weights", "{w}", "--codec-roundtrip",
                                                 "--json", "{out}.json"],
    "eval codec round trip weights missing": ["eval", "--dataset", "shapes", "--codec-roundtrip", "--weights",
                                              "{missing}", "--json", "{out}.json"],
    "eval renoise of generated clips": ["eval", "--generate", "2", "--weights", "{w}", "--renoise", "0.3",
                                        "--json", "{out}.json"],
    "eval renoise and codec round trip": ["eval", "--dataset", "shapes", "--renoise", "0.3", "--codec-roundtrip",
                                          "--json", "{out}.json"],
    "eval renoise out of range": ["eval", "--dataset", "shapes", "--renoise", "1", "--json", "{out}.json"],
    "eval denoise error of generated clips": ["eval", "--generate", "2", "--weights", "{w}", "--denoise-error",
                                              "--json", "{out}.json"],
    "eval denoise error with frechet": ["eval", "--dataset", "shapes", "--denoise-error", "--frechet",
                                        "--json", "{out}.json"],
    "eval denoise error with duration": ["eval", "--dataset", "shapes", "--denoise-error", "--duration", "2",
                                         "--json", "{out}.json"],
    "eval denoise error weights missing": ["eval", "--dataset", "shapes", "--denoise-error", "--weights",
                                           "{missing}", "--json", "{out}.json"],
    "eval denoise error corrupted weights": ["eval", "--dataset", "shapes", "--denoise-error", "--weights", "{bad_w}",
                                             "--json", "{out}.json"],
    "eval codec round trip and corruption": ["eval", "--dataset", "shapes", "--codec-roundtrip", "--corrupt", "noise",
                                             "--json", "{out}.json"],
    "eval weights for dataset clips": ["eval", "--dataset", "shapes", "--weights", "{w}", "--json", "{out}.json"],
    "eval json is a directory": ["eval", "--dataset", "shapes", "--n", "1", "--json", "{dir}"],
    "eval generate zero": ["eval", "--generate", "0", "--weights", "{w}", "--json", "{out}.json"],
    "eval corrupted weights": ["eval", "--generate", "2", "--weights", "{bad_w}", "--json", "{out}.json"],
    # ------------------------------------------------------------------ judges, seeds, bench, demo
    "judges epochs zero": ["judges", "train", "--tiny", "--epochs", "0", "--out", "{outdir}"],
    "judges unknown judge": ["judges", "train", "--which", "smell", "--out", "{outdir}"],
    "judges threads text": ["judges", "train", "--threads", "many", "--out", "{outdir}"],
    "seeds tries zero": ["seeds", "measure", "--out", "{outdir}", "--tries", "0"],
    "seeds measure corrupted weights": ["seeds", "measure", "--out", "{outdir}", "--prompts", "3", "--weights", "{bad_w}"],
    "seeds check nothing": ["seeds", "check", "--seeds", "{missing}", "--weights", "{w}"],
    "bench unknown preset": ["bench", "--preset", "huge", "--json", "{out}.json"],
    "bench json is a directory": ["bench", "--preset", "tiny", "--json", "{dir}"],
    "bench corrupted weights": ["bench", "--preset", "tiny", "--weights", "{bad_w}", "--json", "{out}.json"],
    "demo port zero": ["demo", "--port", "0"],
    "demo port text": ["demo", "--port", "http"],
    "demo port huge": ["demo", "--port", "9" * 40],
    "demo unknown device": ["demo", "--device", "tpu"],
    "demo corrupted weights": ["demo", "--weights", "{bad_w}"],
    "demo weights missing": ["demo", "--weights", "{missing}"],
}


@pytest.fixture(scope="module")
def places(tiny_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-inputs")
    bad = root / "bad-weights"
    shutil.copytree(tiny_weights, bad)
    st = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    st.write_bytes(b"\xff" * 8 + st.read_bytes()[8:])  # the header length is now absurd
    (root / "notes.txt").write_text("not media")
    (root / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    t = np.arange(8000) / 8000
    write_wav((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000, root / "tone.wav")
    return {"w": str(tiny_weights), "bad_w": str(bad), "file": str(root / "notes.txt"), "junk": str(root / "junk.mp4"),
            "wav": str(root / "tone.wav"), "missing": str(root / "no-such-thing")}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, places, tmp_path, capsys, monkeypatch):
    for key in ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE"):  # `avgen demo` sets them before it fails
        monkeypatch.setenv(key, str(tmp_path / key))
    (tmp_path / "empty").mkdir()
    where = {**places, "out": str(tmp_path / "out" / "clip.mp4"), "outdir": str(tmp_path / "out"),
             "dir": str(tmp_path / "empty")}
    argv = [a.format(**where) for a in CASES[case]]
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, (case, rc, captured.err)
    assert "Traceback" not in captured.err and len(err.splitlines()) == 1, captured.err
    assert err.startswith("avgen") and ": error: " in err, err
    assert not (tmp_path / "out").exists() and not list((tmp_path / "empty").iterdir()), "something was written"
    assert captured.out == "", captured.out


def test_the_messages_name_what_to_fix(places, tmp_path, capsys):
    """A few messages in full: the flag, the value, the accepted range; the file, the reason."""
    out = str(tmp_path / "clip.mp4")
    expect = {
        ("--seed", "nan"): "argument --seed: seed must be a whole number from 0 to 2^63 - 1, got 'nan'",
        ("--steps", "0"): "argument --steps: steps must be a whole number from 1 to 200, got 0",
        ("--guidance-scale", "inf"): "argument --guidance-scale: guidance_scale must be a number from 0 to 20, got inf",
        ("--seed", "9" * 5000): "argument --seed: seed must be a whole number from 0 to 2^63 - 1, got "
                                "'999999999999'... (5000 characters)",
        ("--weights", places["bad_w"]): f"{places['bad_w']}/transformer/diffusion_pytorch_model.safetensors: "
                                        "not a readable safetensors file",
        ("--audio", places["junk"]): f"{places['junk']}: not a readable audio or video file",
    }
    for (flag, value), message in expect.items():
        argv = ["generate", "3", "--weights", places["w"], "--device", "cpu", "--out", out, flag, value]
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_a_good_request_still_works_and_says_how_the_sound_was_fitted(places, tmp_path, capsys):
    out = tmp_path / "a2v.mp4"
    assert main(["generate", "", "--weights", places["w"], "--device", "cpu", "--steps", "1", "--out", str(out),
                 "--audio", places["wav"]]) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert "avgen generate: note: the sound lasts 1.0 s: padded with silence to 3 s" in capsys.readouterr().err
