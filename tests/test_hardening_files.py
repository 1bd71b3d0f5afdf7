"""Hostile and broken files: uploads (the studio) and --audio/--video (the CLI) through their one
reader, `avgen.data.given.read_given`; weights and checkpoints; folder datasets. Each is either used
correctly or refused with one line naming the file; nothing is unpickled, nothing decoded past a limit."""
from __future__ import annotations

import ast
import pickle
import re
import shutil
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.data.clip import ClipSpec
from avgen.data.given import MediaLimits, read_given
from avgen.data.io import AVReadError, decode_av, write_video, write_wav
from avgen.demo import inputs
from avgen.demo.inputs import DemoInputError, DemoLimits
from avgen.model.weights import CheckpointError, check_weights_folder
from avgen.train.checkpoint import read_checkpoint
from tests.demo_helpers import tiny_weights  # noqa: F401  (fixture)

SPEC = ClipSpec()
STUDIO = DemoLimits().media()  # 20 MB, 10 s, -50 dBFS
REPO = Path(__file__).resolve().parents[1]


def tone(seconds: float, sr: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def write_av(path: Path, seconds: float, fps: int = 16, size: int = 32, sound: bool = True, picture: bool = True,
             sample_rate: int = 8000) -> Path:
    """An mp4 with a moving square and a tone, or only one of the two (audio-only mp4 = an m4a)."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps) if picture else None
        if vs is not None:
            vs.width = vs.height = size
            vs.pix_fmt, vs.options = "yuv420p", {"preset": "ultrafast"}
        as_ = out.add_stream("aac", rate=sample_rate) if sound else None
        if as_ is not None:
            as_.layout = "mono"
        for i in range(int(seconds * fps) if vs is not None else 0):
            img = np.zeros((size, size, 3), np.uint8)
            img[:, (i * 2) % size] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        if vs is not None:
            out.mux(vs.encode())
        if as_ is not None:
            x = tone(seconds, sample_rate)
            for i in range(0, len(x), 1024):
                frame = av.AudioFrame.from_ndarray(x[None, i:i + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = sample_rate, i
                out.mux(as_.encode(frame))
            out.mux(as_.encode())
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {"mp4": write_av(d / "clip.mp4", 2.0), "wav": write_wav(tone(2.0), 8000, d / "voice.wav"),
            "mute": write_av(d / "mute.mp4", 1.0, sound=False), "m4a": write_av(d / "sound.m4a", 1.0, picture=False)}


def check_outcome(path: Path, kind: str, limits: MediaLimits = STUDIO):
    """read_given's contract for any file: a conformed, finite array, or AVReadError naming the file."""
    try:
        x, notes = read_given(path, SPEC, kind, limits, name=path.name)
    except AVReadError as e:
        msg = str(e)
        assert msg.startswith(f"{path.name}: ") and "\n" not in msg and str(path.parent) not in msg, msg
        return msg
    shape = (SPEC.num_samples,) if kind == "audio" else (SPEC.num_frames, SPEC.height, SPEC.width, SPEC.channels)
    assert x.shape == shape and x.dtype == np.float32 and np.isfinite(x).all()
    assert all("\n" not in n for n in notes)
    return None


# ----------------------------------------------------------------------------- broken uploads
@pytest.mark.parametrize("kind", ["audio", "video"])
@pytest.mark.parametrize("source", ["mp4", "wav"])
def test_empty_random_and_truncated_files_are_refused_or_read_never_crash(media, tmp_path, source, kind):
    good = media[source].read_bytes()
    rng = np.random.default_rng(0)
    broken = {"zero-length": b"", "one byte": b"\x00", "random 4 KB": rng.bytes(4096), "random 300 KB": rng.bytes(300_000),
              "header only": good[:64], "first tenth": good[: len(good) // 10], "first half": good[: len(good) // 2],
              "all but the last byte": good[:-1], "middle scrambled": good[:200] + rng.bytes(len(good) - 400) + good[-200:],
              "right header, random body": good[:44] + rng.bytes(len(good) - 44)}
    outcomes = {}
    for name, data in broken.items():
        path = tmp_path / f"{name}.{source}"
        path.write_bytes(data)
        outcomes[name] = check_outcome(path, kind)
    assert "is empty (0 bytes)" in outcomes["zero-length"]
    assert "not a readable audio or video file" in outcomes["random 4 KB"]
    if source == "wav" and kind == "video":
        assert all(o is not None for o in outcomes.values())  # sound alone is never a picture


def test_a_stream_that_is_not_there(media):
    assert "mute.mp4: has no sound track" == check_outcome(media["mute"], "audio")
    assert check_outcome(media["mute"], "video") is None
    assert "sound.m4a: has no video stream" == check_outcome(media["m4a"], "video")
    assert check_outcome(media["m4a"], "audio") is None


def test_the_demo_and_the_cli_read_uploads_the_same_way(media, tmp_path, capsys, tiny_weights):
    """One reader: the studio gets the same arrays as `avgen generate --audio/--video`."""
    from avgen.cli import main
    from avgen.cli.generate import read_given as cli_read
    from argparse import Namespace

    for kind, path in (("audio", media["wav"]), ("video", media["mp4"])):
        studio = getattr(inputs, f"read_{kind}_upload")(path, SPEC, DemoLimits())
        args = Namespace(audio=path if kind == "audio" else None, video=path if kind == "video" else None,
                         duration=None)
        given, notes = cli_read(args, SPEC)
        assert np.array_equal(given[kind], studio[0]) and notes == studio[1]
    with pytest.raises(DemoInputError, match="^junk.mp4: not a readable audio or video file"):
        junk = tmp_path / "junk.mp4"
        junk.write_bytes(b"\x00" * 1000)
        inputs.read_video_upload(junk, SPEC, DemoLimits())
    out = tmp_path / "never.mp4"
    assert main(["generate", "", "--weights", str(tiny_weights), "--out", str(out), "--audio", str(media["mute"])]) == 2
    assert capsys.readouterr().err.strip() == f"avgen generate: error: {media['mute']}: has no sound track"
    assert not out.exists()


def test_big_frames_are_shrunk_while_decoding(tmp_path):
    path = write_av(tmp_path / "vga.mp4", 1.0, size=640)
    small = decode_av(path, need_audio=False, max_side=256)
    assert small.frames.shape[1:] == (256, 256, 3)
    x, _ = read_given(path, SPEC, "video")
    full = decode_av(path, need_audio=False)
    from avgen.data.io import conform
    reference = conform(full, SPEC, 0.0, 16).frames
    assert np.abs(x[:16] - reference).mean() < 0.01  # shrinking first changes the 32x32 result by nothing visible


# ----------------------------------------------------------------------------- long uploads, counted
class Counting:
    """av.open's container, counting decoded frames; optionally hiding the header's duration (as a
    file that lies about it, or a stream format without one, would)."""

    opened: list["Counting"] = []

    def __init__(self, container, hide_duration: bool):
        self._c, self.frames, self.hide = container, 0, hide_duration
        self.sound_s, self.pictures = 0.0, 0
        Counting.opened.append(self)

    def count(self, frame) -> None:
        self.frames += 1
        if hasattr(frame, "sample_rate"):
            self.sound_s += frame.samples / frame.sample_rate
        else:
            self.pictures += 1

    def __getattr__(self, name):
        return getattr(self._c, name)

    @property
    def duration(self):
        return None if self.hide else self._c.duration

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._c.close()

    def decode(self, *a, **k):
        for f in self._c.decode(*a, **k):
            self.count(f)
            yield f

    def demux(self, *a, **k):
        for packet in self._c.demux(*a, **k):
            yield _CountedPacket(packet, self)


class _CountedPacket:
    def __init__(self, packet, owner):
        self._p, self._owner = packet, owner

    def __getattr__(self, name):
        return getattr(self._p, name)

    def decode(self):
        frames = self._p.decode()
        for f in frames:
            self._owner.count(f)
        return frames


@pytest.fixture()
def counted(monkeypatch):
    import av

    real = av.open
    Counting.opened = []

    def install(hide_duration: bool = False):
        monkeypatch.setattr(av, "open", lambda *a, **k: Counting(real(*a, **k), hide_duration))
        return Counting.opened
    return install


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory) -> dict[str, Path]:
    """A 10-minute wav (8 kHz, 9.6 MB: under the size limit) and a 10-minute 16x16 mp4 with sound at 2 fps."""
    d = tmp_path_factory.mktemp("long")
    return {"audio": write_wav(np.tile(tone(1.0), 600), 8000, d / "ten minutes.wav"),
            "video": write_av(d / "ten minutes.mp4", 600.0, fps=2, size=16)}


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_a_ten_minute_upload_is_refused_from_its_header_without_decoding(ten_minutes, counted, kind):
    opened = counted()
    t0 = time.perf_counter()
    msg = check_outcome(ten_minutes[kind], kind)
    assert "longer than" in msg and "10 s" in msg
    assert time.perf_counter() - t0 < 1.0
    assert sum(c.frames for c in opened) == 0  # refused before a single frame was decoded


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_a_ten_minute_upload_that_hides_its_length_is_cut_off_at_the_limit(ten_minutes, counted, kind):
    opened = counted(hide_duration=True)
    msg = check_outcome(ten_minutes[kind], kind)
    assert "longer than" in msg
    sound_s, pictures = sum(c.sound_s for c in opened), sum(c.pictures for c in opened)
    if kind == "audio":
        assert 10.0 < sound_s < 11.0, f"{sound_s:.1f} s of sound decoded, of 600"
    else:  # 2 frames a second
        assert 20 < pictures < 24 and sound_s < 11.0, f"{pictures} pictures and {sound_s:.1f} s of sound decoded"


def test_a_big_upload_is_refused_before_it_is_opened(ten_minutes, counted):
    opened = counted()
    limits = DemoLimits(max_upload_mb=5)
    with pytest.raises(DemoInputError, match=r"^ten minutes.wav: 9.2 MB is too big; files may be at most 5 MB"):
        inputs.read_audio_upload(ten_minutes["audio"], SPEC, limits)
    assert opened == []


def test_without_limits_the_cli_decodes_only_what_the_clip_needs(ten_minutes, counted):
    opened = counted()
    x, notes = read_given(ten_minutes["video"], SPEC, "video")
    assert x.shape[0] == SPEC.num_frames and notes == ["used the first 3 s of the video"]
    assert sum(c.pictures for c in opened) <= 8 and sum(c.sound_s for c in opened) < 5  # ~4 s of 600


# ----------------------------------------------------------------------------- weights
class Payload:
    """Unpickling this creates `marker`: the proof that something executed code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _wrong_shape(f: Path):
    from safetensors.torch import load_file, save_file
    t = load_file(f)
    k = next(k for k in sorted(t) if t[k].ndim == 2)
    t[k] = torch.zeros(t[k].shape[0] + 1, t[k].shape[1])
    save_file(t, f)


def _missing(f: Path):
    from safetensors.torch import load_file, save_file
    t = load_file(f)
    del t[sorted(t)[3]]
    save_file(t, f)


def _extra(f: Path):
    from safetensors.torch import load_file, save_file
    save_file({**load_file(f), "smuggled.weight": torch.zeros(3)}, f)


WEIGHT_DAMAGE = {
    "wrong shape": (_wrong_shape, "1 tensor(s) of the wrong shape"),
    "missing tensor": (_missing, "1 tensor(s) missing"),
    "extra tensor": (_extra, "1 tensor(s) the network does not have (smuggled.weight)"),
    "corrupted header": (lambda f: f.write_bytes(f.read_bytes()[:8] + b"\xff" * 16 + f.read_bytes()[24:]),
                         "not a readable safetensors file"),
    "absurd header length": (lambda f: f.write_bytes((2 ** 62).to_bytes(8, "little") + f.read_bytes()[8:]),
                             "not a readable safetensors file"),
    "truncated": (lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), "not a readable safetensors file"),
    "zero-length": (lambda f: f.write_bytes(b""), "not a readable safetensors file"),
    "pickle named like weights": (lambda f: f.write_bytes(pickle.dumps({"w": Payload(f.parent / "PWNED")})),
                                  "not a readable safetensors file"),
    "torch.save named like weights": (lambda f: torch.save({"w": Payload(f.parent / "PWNED")}, f),
                                      "not a readable safetensors file"),
    "config not JSON": (lambda f: (f.parent / "config.json").write_text("{not json"), "config.json: not a usable"),
    "config of another network": (lambda f: (f.parent / "config.json").write_text(
        (f.parent / "config.json").read_text().replace('"depth": 2', '"depth": 3')), "tensor(s) missing (blocks.2."),
}


@pytest.mark.parametrize("damage", list(WEIGHT_DAMAGE))
def test_damaged_or_smuggled_weights_are_refused_naming_the_file(damage, tiny_weights, tmp_path, capsys):
    from avgen.cli import main
    from avgen.model.weights import weights_file

    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    f = weights_file(folder)
    hurt, message = WEIGHT_DAMAGE[damage]
    hurt(f)
    with pytest.raises(CheckpointError, match=re.escape(message)) as e:
        check_weights_folder(folder)
    assert str(f.parent) in str(e.value) and "\n" not in str(e.value)
    out = tmp_path / "clip.mp4"
    assert main(["generate", "3", "--weights", str(folder), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avgen generate: error: ") and str(f.parent) in err and len(err.splitlines()) == 1
    assert not out.exists() and not (f.parent / "PWNED").exists()


def test_good_weights_pass_the_check(tiny_weights):
    check_weights_folder(tiny_weights)
    shipped = REPO / "weights" / "avgen"
    if shipped.is_dir():
        check_weights_folder(shipped)


def test_a_pickle_named_like_a_checkpoint_is_refused_and_never_run(tmp_path):
    path = tmp_path / "checkpoints" / "step-00000004.safetensors"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(Payload(tmp_path / "PWNED")))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is unreadable"):
        read_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_nothing_in_the_code_unpickles():
    """Every torch.load passes weights_only=True, every np.load allow_pickle=False; no pickle loads."""
    offenders = []
    for py in sorted([*(REPO / "avgen").rglob("*.py"), *(REPO / "demos").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]):
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
            where = f"{py.relative_to(REPO)}:{node.lineno} {name}"
            if name.endswith("torch.load") and kwargs.get("weights_only") != "True":
                offenders.append(where)
            if name in ("np.load", "numpy.load") and kwargs.get("allow_pickle") != "False":
                offenders.append(where)
            if name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load", "cloudpickle.load"):
                offenders.append(where)
    assert not offenders, offenders


# ----------------------------------------------------------------------------- folder datasets
def test_a_folder_of_hostile_files_keeps_the_good_ones(tmp_path, media):
    from avgen.data import make_dataset

    d = tmp_path / "clips"
    d.mkdir()
    write_av(d / "good.mp4", 3.5)
    (d / "random.mp4").write_bytes(np.random.default_rng(1).bytes(50_000))
    (d / "zero.mkv").write_bytes(b"")
    shutil.copy(media["m4a"], d / "sound only.mp4")
    (d / "pickle.mov").write_bytes(pickle.dumps(Payload(tmp_path / "PWNED")))
    write_av(d / "too long.mp4", 8.0, fps=4, size=16)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        # holdout 0: every file in the one split read here (by default a hash sends a tenth to the test split)
        ds = make_dataset(f"folder:{d}", cache_dir=tmp_path / "cache", max_file_s=6.0, holdout=0.0)
    (msg,) = [str(x.message) for x in w if "skipped" in str(x.message)]
    for bad in ("random.mp4", "zero.mkv", "sound only.mp4", "pickle.mov", "too long.mp4"):
        assert bad in msg
    assert [win.file.name for win in ds.windows] == ["good.mp4"] and ds[0].frames.shape == (48, 32, 32, 1)
    assert not (tmp_path / "PWNED").exists()


def test_fractional_frame_rates_and_odd_sizes_still_conform(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (30, 33, 47, 3), np.uint8)
    path = write_video(tmp_path / "odd.mp4", frames, Fraction(30000, 1001))
    x, notes = read_given(path, SPEC, "video")
    assert x.shape == (48, 32, 32, 1) and np.isfinite(x).all() and notes[0].startswith("the video lasts 1.0 s")
