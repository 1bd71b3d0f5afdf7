"""folder:PATH datasets on files written by our own writer: good, silent, truncated, stereo 44.1 kHz, RGB."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from avgen.data import ClipSpec, make_dataset
from avgen.data.clip import Clip
from avgen.data.io import resample_audio, to_uint8_rgb, upscale, write_mp4, write_video
from tests.test_io import audio_lag_ms, video_segments


@pytest.fixture()
def clip_folder(tmp_path):
    src = make_dataset("shapes", spec=ClipSpec(channels=3), split="test")
    d = tmp_path / "clips"
    d.mkdir()
    clips = {}
    for i in range(3):
        c = src[i]
        write_mp4(c, d / f"good{i}.mp4", scale=4)
        clips[f"good{i}"] = c
    (d / "good0.txt").write_text("circle  square\n")
    c = src[10]
    stereo = resample_audio(np.stack([c.audio, c.audio], 1), 8000, 44100)
    write_video(d / "stereo44k.mkv", to_uint8_rgb(upscale(c.frames, 5)), 16, stereo, 44100)
    clips["stereo44k"] = c
    write_video(d / "silent.mp4", to_uint8_rgb(c.frames), 16)  # no audio track
    full = (d / "good1.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(full[: len(full) // 3])
    (d / "empty.webm").write_bytes(b"")
    short = src[11]
    short.frames, short.audio = short.frames[:10], short.audio[:5000]
    write_mp4(short, d / "short.mp4")
    return d, clips


def test_folder_loader(clip_folder, tmp_path):
    d, clips = clip_folder
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = make_dataset(f"folder:{d}", spec=ClipSpec(channels=3), cache_dir=tmp_path / "cache", holdout=0.0)
    msgs = [str(x.message) for x in w if "skipped" in str(x.message)]
    assert len(msgs) == 1  # one warning listing every bad file
    for bad in ("silent.mp4", "truncated.mp4", "empty.webm", "short.mp4"):
        assert bad in msgs[0]
    names = sorted(win.file.stem for win in ds.windows)
    assert names == ["good0", "good1", "good2", "stereo44k"]
    assert ds.vocab == ("circle", "square")
    for k in range(len(ds.windows)):
        c = ds[k]
        ref = clips[ds.windows[k].file.stem]
        assert c.frames.shape == (48, 32, 32, 3) and c.audio.shape == (24000,)
        assert c.prompt == ("circle square" if ds.windows[k].file.stem == "good0" else "")
        got = video_segments(c.frames)
        truth = [(round(e.start_s * 16), round(e.end_s * 16)) for e in ref.events]
        assert len(got) == len(truth) and all(abs(a - ta) <= 1 and abs(b - tb) <= 1
                                              for (a, b), (ta, tb) in zip(got, truth))
        assert abs(audio_lag_ms(ref.audio, c.audio, 8000)) <= 10.0


def test_folder_cache_and_grey(clip_folder, tmp_path, monkeypatch):
    d, _ = clip_folder
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = make_dataset(f"folder:{d}", cache_dir=cache, holdout=0.0)
        assert ds[0].frames.shape == (48, 32, 32, 1)
        import avgen.data.folder as folder

        def no_decode(*a, **k):
            raise AssertionError("decoded again although cached")
        monkeypatch.setattr(folder, "decode_av", no_decode)
        ds2 = make_dataset(f"folder:{d}", cache_dir=cache, holdout=0.0)  # good files come from the cache
    assert np.array_equal(ds2[1].frames, ds[1].frames)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        make_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable video"):
        make_dataset(f"folder:{tmp_path / 'empty'}")


# ----------------------------------------------------------------------------- timelines, splits, bad folders
def captioned_folder(tmp_path, n: int, name: str = "toys") -> Path:
    """A folder like a user's, made by the README guide's own script (see scripts/make_example_folder.py)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_example_folder.py"
    spec = importlib.util.spec_from_file_location("make_example_folder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_folder(tmp_path / name, n, name)


def test_captions_are_placed_on_the_events_the_clips_show(tmp_path):
    """The guide's clips put each event at a free time (not on the frame grid): the derived timeline puts
    caption word k on event k within a few ms of where the generator put it."""
    import importlib.util
    from pathlib import Path

    folder = captioned_folder(tmp_path, 8)
    ds = make_dataset(f"folder:{folder}", cache_dir=tmp_path / "cache", holdout=0.0)
    spec = importlib.util.spec_from_file_location("mk", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "make_example_folder.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    onset_errors = []
    for w in ds.windows:
        rng = np.random.default_rng([0, int(w.file.stem.split("_")[1])])
        frames, audio, labels = mk.make_clip(rng, mk.KINDS["toys"])  # the same draw the folder was made from
        rng = np.random.default_rng([0, int(w.file.stem.split("_")[1])])
        names = list(mk.KINDS["toys"])
        while True:  # the generator's own spans, drawn again
            drawn = [names[i] for i in rng.integers(0, len(names), rng.integers(1, 4))]
            spans = mk.layout(rng, len(drawn))
            if spans is not None:
                break
        assert drawn == labels and [e.label for e in w.events] == labels, (w.file.name, w.why)
        onset_errors += [abs(e.start_s - a) for e, (a, _) in zip(w.events, spans)]
    assert max(onset_errors) < 0.02, onset_errors
    report = ds.timeline_report()
    assert report["windows_with_timeline"] == report["windows"] == 8 and report["without_timeline"] == {}
    assert set(report["event_seconds"]) <= {"bell", "drum", "whistle"}


def test_files_are_held_out_by_file_and_the_split_is_stable(tmp_path):
    folder = captioned_folder(tmp_path, 30)
    kw = {"cache_dir": tmp_path / "cache", "holdout": 0.2}
    train, test = (make_dataset(f"folder:{folder}", split=s, **kw) for s in ("train", "test"))
    train_files = {w.file.name for w in train.windows}
    test_files = {w.file.name for w in test.windows}
    assert train_files.isdisjoint(test_files) and len(train_files | test_files) == 30
    assert sorted(test_files) == sorted(train.held_out_files) == sorted(test.held_out_files)
    assert 2 <= len(test_files) <= 12 and train.vocab == test.vocab  # one vocabulary for both splits
    again = make_dataset(f"folder:{folder}", split="test", **kw)
    assert {w.file.name for w in again.windows} == test_files  # the same files every time
    (folder / "toys_9999.mp4").write_bytes((folder / "toys_0000.mp4").read_bytes())  # adding a file moves no other
    (folder / "toys_9999.txt").write_text((folder / "toys_0000.txt").read_text())
    grown = make_dataset(f"folder:{folder}", split="test", **kw)
    assert test_files <= {w.file.name for w in grown.windows}
    assert not make_dataset(f"folder:{folder}", holdout=0.0, cache_dir=tmp_path / "cache").held_out_files
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.mp4").write_bytes((folder / "toys_0000.mp4").read_bytes())
    assert len(make_dataset(f"folder:{one}", cache_dir=tmp_path / "cache", holdout=0.5)) == 1  # all trains
    with pytest.raises(ValueError, match="no file is held out for testing"):
        make_dataset(f"folder:{one}", split="test", cache_dir=tmp_path / "cache", holdout=0.5)


def test_a_long_file_gives_windows_with_their_own_events(tmp_path):
    """A 7-s file: windows [0, 3) and [3, 6) s; an event across 6 s (the second window's end) leaves that
    window without a timeline (and says why); the events inside a window are on its own clock."""
    spec = ClipSpec()
    fps, sr = spec.fps, spec.sample_rate
    n = 7 * fps
    frames = np.zeros((n, 32, 32, 1), np.float32)
    audio = np.zeros(n * (sr // fps), np.float32)
    t = np.arange(len(audio)) / sr
    spans = [(0.5, 1.0), (1.5, 2.0), (3.5, 4.0), (5.8, 6.3)]
    for a, b in spans:
        frames[int(a * fps):int(b * fps), 8:24, 8:24] = 1.0
        audio[(t >= a) & (t < b)] = 0.5 * np.sin(2 * np.pi * 440 * t[(t >= a) & (t < b)])
    d = tmp_path / "long"
    d.mkdir()
    write_mp4(Clip(frames, audio, fps, sr), d / "long.mp4", scale=2)
    (d / "long.txt").write_text("a b c d")
    ds = make_dataset(f"folder:{d}", cache_dir=tmp_path / "cache", holdout=0.0)
    assert [w.start_frame for w in ds.windows] == [0, 48]
    first, second = ds[0], ds[1]
    assert [e.label for e in first.events] == ["a", "b"] and first.prompt == "a b"
    assert abs(first.events[1].start_s - 1.5) < 0.07
    assert second.events == [] and ds.windows[1].why == "an event crosses the window's edge"
    assert second.prompt == "c" and second.meta["no_timeline"] == "an event crosses the window's edge"


def test_a_changed_file_or_caption_is_read_again(tmp_path, monkeypatch):
    import os

    import avgen.data.folder as folder_module

    folder = captioned_folder(tmp_path, 2)
    kw = {"cache_dir": tmp_path / "cache", "holdout": 0.0}
    first = make_dataset(f"folder:{folder}", **kw)
    decoded = []
    real = folder_module.decode_av
    monkeypatch.setattr(folder_module, "decode_av", lambda p, *a, **k: decoded.append(p.name) or real(p, *a, **k))
    make_dataset(f"folder:{folder}", **kw)
    assert decoded == []  # both from the cache
    target = folder / "toys_0000.mp4"
    target.write_bytes(target.read_bytes())  # new mtime: maybe new content
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10 ** 9))
    (folder / "toys_0001.txt").write_text("drum")  # a caption that no longer fits its events
    again = make_dataset(f"folder:{folder}", **kw)
    assert decoded == ["toys_0000.mp4"]
    changed = next(w for w in again.windows if w.file.name == "toys_0001.webm")
    assert changed.events is None and changed.why.startswith("1 word(s) in the caption")
    assert next(w for w in first.windows if w.file.name == "toys_0001.webm").events is not None


def test_bad_folders_say_what_is_wrong(tmp_path):
    folder = captioned_folder(tmp_path, 4)
    (folder / "toys_0000.txt").write_text("bell unicorn")  # a word no other caption uses, and a wrong count
    for p in folder.glob("*.txt"):
        if p.name != "toys_0000.txt":
            p.write_text(" ".join(["drum"] * 3 + ["bell"] * 3))  # six words: no clip shows six events
    with pytest.warns(UserWarning) as caught:
        ds = make_dataset(f"folder:{folder}", cache_dir=tmp_path / "cache", holdout=0.0)
    message = " ".join(str(w.message) for w in caught)
    assert "1 word(s) appear in one caption only, too few to learn: unicorn" in message
    assert "none of the 4 captioned file(s) shows as many events as its caption has words" in message
    assert ds.timeline_report()["windows_with_timeline"] == 0
    silent = tmp_path / "quiet"
    silent.mkdir()
    write_mp4(Clip(np.zeros((48, 32, 32, 1), np.float32), np.zeros(24000, np.float32), 16, 8000), silent / "q.mp4")
    (silent / "q.txt").write_text("bell")
    with pytest.warns(UserWarning):
        quiet = make_dataset(f"folder:{silent}", cache_dir=tmp_path / "cache", holdout=0.0)
    assert quiet.windows[0].why == "no event detected in the sound or the picture"
