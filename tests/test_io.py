"""Clip I/O: mp4 writing, decoding with the container's timing, frames + wav, preview sheets."""
from __future__ import annotations

import json

import numpy as np
import pytest

from avgen.data import ClipSpec, make_dataset
from avgen.data.io import (AVReadError, decode_av, read_clip, resample_audio, to_uint8_rgb, upscale, write_frames,
                           write_mp4, write_video, write_wav)
from avgen.data.preview import render_sheet, write_preview


def audio_lag_ms(ref: np.ndarray, got: np.ndarray, sr: int) -> float:
    """Lag of `got` behind `ref` by cross-correlation (positive: got is late)."""
    n = len(ref) + len(got)
    xc = np.fft.irfft(np.fft.rfft(got, n) * np.conj(np.fft.rfft(ref, n)), n)
    lag = int(np.argmax(xc))
    lag = lag - n if lag > n // 2 else lag
    return 1000.0 * lag / sr


def video_segments(frames: np.ndarray, thr: float = 0.15) -> list[tuple[int, int]]:
    on = frames.reshape(len(frames), -1).max(axis=1) > thr
    edges = np.diff(np.concatenate([[0], on.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


@pytest.mark.parametrize("name", ["shapes", "talking-digits"])
def test_mp4_round_trip_keeps_events_and_sync(name, tmp_path, request):
    if name == "talking-digits":
        request.getfixturevalue("data_root")
    ds = make_dataset(name, split="test")
    for i in range(6):
        c = ds[i]
        path = write_mp4(c, tmp_path / f"{i}.mp4", scale=8)
        d = decode_av(path)
        assert d.frames.shape == (48, 256, 256, 3) and d.fps == 16 and d.sample_rate == 8000
        r = read_clip(path, ds.spec)
        assert r.frames.shape == c.frames.shape and r.audio.shape == c.audio.shape
        truth = [(round(e.start_s * 16), round(e.end_s * 16)) for e in c.events]
        got = video_segments(r.frames)
        assert len(got) == len(truth)
        for (a, b), (ta, tb) in zip(got, truth):
            assert abs(a - ta) <= 1 and abs(b - tb) <= 1
        assert abs(audio_lag_ms(c.audio, r.audio, 8000)) <= 10.0
        assert np.abs(r.frames - c.frames).mean() < 0.01


@pytest.mark.parametrize("ext", ["webm", "mkv", "mov"])
def test_other_containers_stereo_44k(ext, tmp_path):
    c = make_dataset("shapes")[2]
    stereo = resample_audio(np.stack([c.audio, 0.5 * c.audio], axis=1), 8000, 44100)
    path = write_video(tmp_path / f"x.{ext}", to_uint8_rgb(upscale(c.frames, 3)), 16, stereo, 44100)
    r = read_clip(path, ClipSpec())
    assert abs(audio_lag_ms(c.audio, r.audio, 8000)) <= 10.0
    assert np.corrcoef(c.audio, r.audio)[0, 1] > 0.9


def test_read_clip_native_spec_and_errors(tmp_path):
    c = make_dataset("shapes", spec=ClipSpec(channels=3))[1]
    path = write_mp4(c, tmp_path / "c.mp4", scale=2)
    r = read_clip(path)  # native: 64x64 RGB, 16 fps, 8 kHz
    assert r.frames.shape == (48, 64, 64, 3) and r.fps == 16 and r.sample_rate == 8000
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(AVReadError, match="junk.mp4"):
        decode_av(tmp_path / "junk.mp4")
    with pytest.raises(AVReadError, match="no such file"):
        decode_av(tmp_path / "missing.mp4")
    with pytest.raises(AVReadError, match="directory"):
        decode_av(tmp_path)
    silent = write_video(tmp_path / "silent.mp4", to_uint8_rgb(c.frames), 16)
    with pytest.raises(AVReadError, match="no audio track"):
        decode_av(silent)
    assert decode_av(silent, need_audio=False).audio is None
    with pytest.raises(AVReadError, match="limit"):
        decode_av(path, max_duration_s=1.0)
    with pytest.raises(ValueError, match="scale"):
        write_mp4(c, tmp_path / "bad.mp4", scale=0)
    assert not (tmp_path / "bad.mp4").exists()


def test_frames_wav_and_sheet(tmp_path):
    c = make_dataset("shapes")[0]
    out = write_frames(c, tmp_path / "frames")
    assert len(list(out.glob("frame_*.png"))) == 48
    info = json.loads((out / "clip.json").read_text())
    assert info["prompt"] == c.prompt and len(info["events"]) == len(c.events)
    import wave
    with wave.open(str(out / "audio.wav")) as w:
        assert w.getframerate() == 8000 and w.getnframes() == 24000
    write_wav(np.zeros((10, 2)), 8000, tmp_path / "st.wav")
    png = render_sheet(c, tmp_path / "sheet.png", detected={"video_onsets_s": [0.5], "audio_onsets_s": [0.52]})
    from PIL import Image
    img = np.asarray(Image.open(png))
    assert img.shape[0] > 200 and img.shape[1] > 600 and img.std() > 10  # a real picture, not blank
    paths = write_preview(make_dataset("shapes"), 2, tmp_path / "prev", scale=4)
    assert [p.suffix for p in paths] == [".mp4", ".png", ".mp4", ".png"]
    assert decode_av(paths[0]).frames.shape[1] == 128


def test_frame_rate_falls_back_to_timestamps():
    from fractions import Fraction
    from avgen.data.io import _frame_rate
    times = np.arange(10) / 16
    assert _frame_rate(Fraction(16), times) == 16
    assert _frame_rate(Fraction(-36161), times) == pytest.approx(16)
    assert _frame_rate(None, times) == pytest.approx(16)
    assert _frame_rate(None, np.zeros(1)) == 25.0
    # PyAV raising while it reads the declared rate counts as no declared rate
    from avgen.data.io import _declared_rate

    class Broken:
        @property
        def average_rate(self):
            raise ZeroDivisionError("Fraction(37, 0)")

    class Fine:
        average_rate = Fraction(16)

    assert _declared_rate(Broken()) is None and _declared_rate(Fine()) == 16
    assert _frame_rate(_declared_rate(Broken()), times) == pytest.approx(16)
