"""folder:PATH datasets on files written by our own writer: good, silent, truncated, stereo 44.1 kHz, RGB."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from avgen.data import ClipSpec, make_dataset
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
        ds = make_dataset(f"folder:{d}", spec=ClipSpec(channels=3), cache_dir=tmp_path / "cache")
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
        ds = make_dataset(f"folder:{d}", cache_dir=cache)
        assert ds[0].frames.shape == (48, 32, 32, 1)
        import avgen.data.folder as folder

        def no_decode(*a, **k):
            raise AssertionError("decoded again although cached")
        monkeypatch.setattr(folder, "decode_av", no_decode)
        ds2 = make_dataset(f"folder:{d}", cache_dir=cache)  # good files come from the cache
    assert np.array_equal(ds2[1].frames, ds[1].frames)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        make_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable video"):
        make_dataset(f"folder:{tmp_path / 'empty'}")
