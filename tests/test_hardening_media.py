"""Other people's clips: real-world video sizes are decoded small, one bad file never sinks a run, paths
that are not files are refused before anything opens them, and `avgen generate` keeps users' files. Every
file here is a real one made by the test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from avgen.cli import main
from avgen.data import make_dataset
from avgen.data.io import write_mp4
from tests.demo_helpers import tiny_weights  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def encode(path: Path, width: int, height: int, fps: int, seconds: float, codec: str = "libx264",
           sound: bool = True, pixel=None) -> Path:
    """A real file, frame by frame (a 4K clip never sits in this process's memory whole): a moving
    checkerboard and a tone."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps, options={"preset": "ultrafast", "crf": "35"} if codec == "libx264" else {})
        vs.width, vs.height = width, height
        vs.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        audio = out.add_stream("aac", rate=16000) if sound else None
        cell = max(1, min(width, height) // 8)
        for i in range(int(fps * seconds)):
            y, x = np.ogrid[:height, :width]
            img = ((((x + 3 * i) // cell + y // cell) % 2) * 200).astype(np.uint8) if pixel is None else pixel(i)
            frame = av.VideoFrame.from_ndarray(np.broadcast_to(img[..., None], (height, width, 3)).copy(), format="rgb24")
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if audio is not None:
            t = np.arange(int(16000 * seconds)) / 16000
            a = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                           format="flt", layout="mono")
            a.sample_rate = 16000
            for p in audio.encode(a):
                out.mux(p)
            for p in audio.encode():
                out.mux(p)
    return path


# ----------------------------------------------------------------------------- 4K and 8K
PEAK = textwrap.dedent("""
    import sys, threading, psutil
    import avgen.cli, avgen.eval.suite, torch  # everything the job needs, before the baseline is taken
    from avgen.data import make_dataset
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    done = threading.Event()
    def watch():
        global peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            done.wait(0.002)
    threading.Thread(target=watch, daemon=True).start()
    if sys.argv[1] == "eval":
        rc = avgen.cli.main(["eval", sys.argv[2], "--no-judges", "--no-plots", "--json", sys.argv[3]])
        assert rc == 0
    else:
        ds = make_dataset("folder:" + sys.argv[2])
        assert len(ds) == 1 and ds[0].frames.shape == (48, 32, 32, 1)
    done.set()
    peak = max(peak, proc.memory_info().rss)
    print((peak - base) / 2 ** 20)
""")


@pytest.mark.slow
def test_a_4k_clip_is_evaluated_and_cached_in_bounded_memory(tmp_path):
    """3 s of 3840x2160 at 30 fps is 2.2 GB of RGB frames: decoded whole, the suite took 6.9 GB and the folder
    loader 3.7 GB. Both now shrink frames as they are decoded; what the clip adds to the process must stay
    under 1 GB (measured: about 0.3 GB for the suite, 0.2 GB for the folder's cache)."""
    folder = tmp_path / "phone"
    folder.mkdir()
    clip = encode(folder / "4k.mp4", 3840, 2160, 30, 3.0)
    env = {**os.environ, "AVGEN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    for job, target in (("eval", str(clip)), ("folder", str(folder))):
        done = subprocess.run([sys.executable, "-c", PEAK, job, target, str(tmp_path / "eval.json")], env=env,
                              capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        added_mb = float(done.stdout.strip().splitlines()[-1])
        assert added_mb < 1024, (job, added_mb)
    record = json.loads((tmp_path / "eval.json").read_text())["clips"][0]
    assert "error" not in record and record["duration_s"] == pytest.approx(3.0, abs=0.05)


def test_a_short_8k_file_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    import avgen.data.folder as folder_module

    folder = tmp_path / "clips"
    folder.mkdir()
    encode(folder / "8k.mp4", 7680, 4320, 4, 1.0)
    encode(folder / "ok.mp4", 64, 64, 16, 3.0)

    def decode_av(path, *a, **k):  # nothing but the header may be read of the short file
        assert Path(path).name != "8k.mp4", "the 8K file was decoded"
        return real(path, *a, **k)
    real = folder_module.decode_av
    monkeypatch.setattr(folder_module, "decode_av", decode_av)
    with pytest.warns(UserWarning, match=r"8k\.mp4: too short \(1\.\d\d s < 3 s\)"):
        ds = make_dataset(f"folder:{folder}", cache_dir=tmp_path / "cache")
    assert len(ds) == 1


# ----------------------------------------------------------------------------- one bad file never sinks a run
def test_eval_over_a_folder_of_hostile_files_always_writes_its_json(tmp_path):
    """A thin (2 x 1000) MJPEG clip crashed the onset analysis with an IndexError and the whole run ended
    without JSON; a named pipe given by path blocked forever. Each now gets its own error record (or is
    analysed), the good clip its figures, and the JSON is written."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    good = write_mp4(make_dataset("shapes", split="test")[0], folder / "good.mp4")
    thin = encode(folder / "thin.avi", 2, 1000, 16, 3.0, codec="mjpeg",
                  pixel=lambda i: np.full((1000, 2), 255 if 10 < i < 20 else 0, np.uint8))
    (folder / "text.mp4").write_text("not a video")
    (folder / "empty.webm").write_bytes(b"")
    pipe = tmp_path / "pipe.mp4"
    os.mkfifo(pipe)
    out = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, "-c", "import sys; from avgen.cli import main; sys.exit(main())", "eval",
                           str(folder), str(pipe), "/dev/zero", "--no-judges", "--no-plots", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    records = {Path(r["path"]).name: r for r in json.loads(out.read_text())["clips"]}
    assert "error" not in records[good.name] and records[good.name]["onset_f1"] == 1.0
    assert "error" not in records[thin.name] and records[thin.name]["duration_s"] == pytest.approx(3.0)  # thin, read
    assert "cannot open as a video file" in records["text.mp4"]["error"]
    assert records["empty.webm"]["error"]
    assert records["pipe.mp4"]["error"] == f"{pipe}: is a named pipe, expected an audio or video file"
    assert records["zero"]["error"] == "/dev/zero: is a character device, expected an audio or video file"


def test_an_analysis_that_fails_is_that_file_s_error_not_the_run_s(tmp_path, monkeypatch):
    from avgen.eval import analysis
    from avgen.eval.suite import EvalConfig, Item, evaluate

    clips = [write_mp4(make_dataset("shapes", split="test")[i], tmp_path / f"{i}.mp4") for i in range(2)]
    real = analysis.analyse

    def fails_on_the_first(sig, *a, **k):
        if sig.source.endswith("0.mp4"):
            raise IndexError("index -1 is out of bounds for axis 0 with size 0")
        return real(sig, *a, **k)
    monkeypatch.setattr(analysis, "analyse", fails_on_the_first)
    report = evaluate([Item(c) for c in clips], EvalConfig(av_align=False))
    assert report.clips[0]["error"] == "analysis failed: IndexError: index -1 is out of bounds for axis 0 with size 0"
    assert "onset_f1" in report.clips[1] and report.summary["n_errors"] == 1


@pytest.mark.parametrize("flag", ["--audio", "--video"])
@pytest.mark.parametrize("special, words", [("pipe", "is a named pipe"), ("/dev/zero", "is a character device"),
                                            ("dir", "is a directory")])
def test_a_path_that_is_not_a_file_is_refused_with_the_right_words(flag, special, words, tiny_weights, tmp_path,  # noqa: F811
                                                                  capsys):
    path = {"pipe": tmp_path / "voice.wav", "dir": tmp_path, "/dev/zero": Path("/dev/zero")}[special]
    if special == "pipe":
        os.mkfifo(path)
    out = tmp_path / "a.mp4"
    assert main(["generate", "", flag, str(path), "--weights", str(tiny_weights), "--out", str(out), "--device",
                 "cpu", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"avgen generate: error: {path}: {words}, expected an audio or video file" and not out.exists()


# ----------------------------------------------------------------------------- avgen generate keeps users' files
def test_generate_does_not_replace_a_clip_without_force(tiny_weights, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "clip.mp4"
    args = ["generate", "3", "--weights", str(tiny_weights), "--out", str(out), "--device", "cpu", "--steps", "1"]
    assert main(args) == 0
    capsys.readouterr()
    first = out.read_bytes(), out.with_suffix(".json").read_text()
    assert main([*args, "--seed", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"avgen generate: error: --out {out}: would replace {out}, {out.with_suffix('.json')}; pass "
                   "--force to replace, or give another name")
    assert (out.read_bytes(), out.with_suffix(".json").read_text()) == first  # untouched
    assert main([*args, "--seed", "5", "--force"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["seed"] == 5
    # several clips: any of OUT_000.mp4 ... counts
    many = tmp_path / "many.mp4"
    (tmp_path / "many_001.json").write_text("{}")
    assert main([*args[:5], str(many), *args[6:], "--num-clips", "3"]) == 2
    assert "would replace " + str(tmp_path / "many_001.json") in capsys.readouterr().err


def test_an_unwritable_out_is_named_before_any_sampling(tiny_weights, tmp_path, capsys, monkeypatch):  # noqa: F811
    import avgen.api.generate as gen

    monkeypatch.setattr(gen, "generate", lambda *a, **k: pytest.fail("sampled before checking --out"))
    for out, why in (("/proc/x.mp4", "cannot write in /proc"),
                     (str(tmp_path / "file.txt" / "x.mp4"), "is a file, not a folder")):
        if "file.txt" in out:
            (tmp_path / "file.txt").write_text("a file")
        assert main(["generate", "3", "--weights", str(tiny_weights), "--out", out, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"avgen generate: error: --out {out}: ") and why in err and len(err.splitlines()) == 1
