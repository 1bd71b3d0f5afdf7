"""Talking Digits and shapes: schema, determinism, splits, events on the voiced part and the frame grid,
corrupt sources."""
from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest

from avgen.data import ClipSpec, SourceError, make_dataset
from avgen.data.events import layout
from avgen.data.talking_digits import TRIM_DB, change_speed, shift_image, voiced_span


def check_schema(ds, n=40):
    spec = ds.spec
    for i in range(n):
        c = ds[i]
        assert c.frames.shape == (spec.num_frames, spec.height, spec.width, spec.channels)
        assert c.frames.dtype == np.float32 and c.audio.dtype == np.float32
        assert c.audio.shape == (spec.num_samples,)
        assert 0 <= c.frames.min() and c.frames.max() <= 1 and np.abs(c.audio).max() <= 1
        assert 1 <= len(c.events) <= 3
        assert c.prompt == " ".join(e.label for e in c.events)
        assert all(e.label in ds.vocab for e in c.events)
        ends = [0.0] + [e.end_s for e in c.events]
        for prev_end, e in zip(ends, c.events):
            # on the frame grid, inside the clip, separated by >= 0.15 s of silence
            assert abs(e.start_s * spec.fps - round(e.start_s * spec.fps)) < 1e-9
            assert abs(e.end_s * spec.fps - round(e.end_s * spec.fps)) < 1e-9
            assert 0 <= e.start_s < e.end_s <= spec.duration + 1e-9
            if prev_end > 0:
                assert e.start_s - prev_end >= 0.15 - 1e-9
        # picture: the event's frames are non-blank and everything else is blank
        on = np.zeros(spec.num_frames, bool)
        for e in c.events:
            on[round(e.start_s * spec.fps): round(e.end_s * spec.fps)] = True
        energy = c.frames.reshape(spec.num_frames, -1).max(axis=1)
        assert (energy[on] > 0.2).all() and (energy[~on] == 0).all()
        # sound: silence outside events
        per_frame = c.audio.reshape(spec.num_frames, -1)
        assert (np.abs(per_frame[~on]).max(initial=0) == 0)


def test_shapes_schema_and_determinism():
    ds = make_dataset("shapes", seed=3)
    check_schema(ds)
    again = make_dataset("shapes", seed=3)
    for i in (0, 7, 123456):
        a, b = ds[i], again[i]
        assert a.prompt == b.prompt and np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert ds[0].prompt != make_dataset("shapes", seed=4)[0].prompt or not np.array_equal(
        ds[0].audio, make_dataset("shapes", seed=4)[0].audio)


def test_shapes_rgb_and_other_rates():
    spec = ClipSpec(duration=2.0, height=24, width=40, channels=3, fps=25, sample_rate=16000)
    check_schema(make_dataset("shapes", spec=spec), n=10)


def test_prompt_parsing_and_fixed_labels():
    ds = make_dataset("shapes")
    c = ds.clip(5, labels="circle square")
    assert [e.label for e in c.events] == ["circle", "square"]
    with pytest.raises(ValueError, match="is not one"):
        ds.parse_prompt("circle blob")
    with pytest.raises(ValueError, match="at most 3"):
        ds.parse_prompt("circle circle circle circle")


def test_layout_rules():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lens = list(rng.integers(1, 12, size=rng.integers(1, 4)))
        on = layout(lens, 48, 3, rng)
        if on is None:
            assert sum(lens) + 3 * (len(lens) - 1) > 48
            continue
        assert on[0] >= 0 and on[-1] + lens[-1] <= 48
        for i in range(1, len(lens)):
            assert on[i] - (on[i - 1] + lens[i - 1]) >= 3
    assert layout([40, 10], 48, 3, rng) is None


@pytest.mark.data
def test_talking_digits_schema_determinism(data_root):
    ds = make_dataset("talking-digits", data_root=data_root, seed=1)
    check_schema(ds)
    b = make_dataset("talking-digits", data_root=data_root, seed=1)
    assert all(np.array_equal(ds[i].audio, b[i].audio) and ds[i].prompt == b[i].prompt for i in range(20))
    assert [ds[i].prompt for i in range(20)] != [make_dataset("talking-digits", data_root=data_root, seed=2)[i].prompt
                                                 for i in range(20)]


def test_speed_change_scales_tempo_and_pitch_and_refits_the_segment():
    spec = ClipSpec()
    sr, spf = spec.sample_rate, spec.samples_per_frame
    tone = np.sin(2 * np.pi * 400 * np.arange(10 * spf) / sr).astype(np.float32)
    for speed in (0.8, 1.25):
        out = change_speed(tone, speed, spec)
        assert len(out) % spf == 0 and len(out) == -(-round(len(tone) / speed) // spf) * spf
        assert float(np.abs(out).max()) == pytest.approx(0.8, abs=1e-6) and out[0] == 0 and out[-1] == 0  # faded
        spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
        assert np.fft.rfftfreq(len(out), 1 / sr)[spectrum.argmax()] == pytest.approx(400 * speed, rel=0.02)


def test_image_shift_moves_the_content_and_fills_with_black():
    image = np.zeros((8, 8, 1), np.float32)
    image[3, 4] = 1.0
    moved = shift_image(image, 2, -3)
    assert moved[5, 1, 0] == 1.0 and moved.sum() == 1.0
    assert shift_image(image, 5, 0).sum() == 0.0 and np.array_equal(shift_image(image, 0, 0), image)


@pytest.mark.data
def test_augmentation_draws_after_the_clip_and_only_when_asked(data_root):
    plain = make_dataset("talking-digits", data_root=data_root, seed=1)
    off = make_dataset("talking-digits", data_root=data_root, seed=1, augment_speed=0.0, augment_shift_px=0)
    assert all(np.array_equal(plain[i].audio, off[i].audio) and np.array_equal(plain[i].frames, off[i].frames)
               for i in range(10))
    on = make_dataset("talking-digits", data_root=data_root, seed=1, augment_speed=0.2, augment_shift_px=2)
    again = make_dataset("talking-digits", data_root=data_root, seed=1, augment_speed=0.2, augment_shift_px=2)
    assert all(np.array_equal(on[i].audio, again[i].audio) for i in range(10))  # still a function of the index
    speeds = [float(part.split(":")[1]) for i in range(40) for src in on[i].meta["sources"]
              for part in src.split() if part.startswith("speed:")]
    assert len(speeds) >= 40 and 1 / 1.2 - 1e-9 <= min(speeds) < 0.95 and 1.05 < max(speeds) <= 1.2 + 1e-9
    check_schema(on)
    with pytest.raises(ValueError, match="augment_speed"):
        make_dataset("talking-digits", data_root=data_root, augment_speed=2.0)


@pytest.mark.data
def test_splits_never_leak(data_root):
    seen = {}
    for split in ("train", "test"):
        ds = make_dataset("talking-digits", split=split, data_root=data_root)
        takes, images = set(), set()
        for i in range(400):
            for src in ds[i].meta["sources"]:
                wav, img = src.split()
                takes.add(int(wav.split("_")[2].split(".")[0]))
                images.add(int(img.split(":")[1]))
        seen[split] = (takes, images)
    assert seen["test"][0] <= set(range(5)) and not seen["train"][0] & set(range(5))
    assert min(seen["test"][1]) >= 8000 and max(seen["train"][1]) < 8000


@pytest.mark.data
def test_events_are_the_voiced_part(data_root):
    """Each event's sound is its recording from the voice onset (-20 dB rule) on, whole frames long,
    covering the whole voiced part and at most one frame more: no lead-in before the picture appears."""
    from avgen.data.sources import read_wav
    ds = make_dataset("talking-digits", data_root=data_root, split="test")
    spf, fade = ds.spec.samples_per_frame, 40
    for i in range(60):
        c = ds[i]
        for e, src in zip(c.events, c.meta["sources"]):
            x, sr = read_wav(data_root / "fsdd" / "recordings" / src.split()[0].split(":")[1])
            a, b = voiced_span(x, sr, db=TRIM_DB)
            s0, s1 = round(e.start_s * c.sample_rate), round(e.end_s * c.sample_rate)
            seg = c.audio[s0:s1]
            assert len(seg) % spf == 0 and b - a <= len(seg) < b - a + spf
            ref = np.pad(x[a: a + len(seg)], (0, max(0, a + len(seg) - len(x))))
            gain = np.abs(seg).max() / np.abs(ref[fade:-fade]).max()
            np.testing.assert_allclose(seg[fade:-fade], gain * ref[fade:-fade], atol=2e-3)


@pytest.mark.data
def test_voiced_span_on_a_padded_recording(data_root):
    from avgen.data.sources import list_fsdd, read_wav
    rec = list_fsdd(data_root)[0]
    x, sr = read_wav(rec.path)
    a, b = voiced_span(x, sr)
    pad = int(0.3 * sr)
    noisy = np.concatenate([np.random.default_rng(0).normal(0, 1e-4, pad).astype(np.float32), x])
    a2, b2 = voiced_span(noisy, sr)
    assert abs((a2 - pad) - a) <= 0.01 * sr and abs((b2 - pad) - b) <= 0.01 * sr


def _copy_root(src, dst):
    (dst / "fsdd").mkdir(parents=True)
    os.symlink(src / "fsdd" / "recordings", dst / "fsdd" / "recordings")
    shutil.copytree(src / "mnist", dst / "mnist")
    return dst


@pytest.mark.data
def test_corrupt_sources_name_the_file(data_root, tmp_path):
    # a truncated MNIST file
    root = _copy_root(data_root, tmp_path / "a")
    img = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(gzip.decompress(img.read_bytes())[:5000]))
    with pytest.raises(SourceError, match="t10k-images-idx3-ubyte.gz.*truncated.*avgen data download"):
        make_dataset("talking-digits", data_root=root)
    # random bytes instead of gzip
    img.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SourceError, match="t10k-images-idx3-ubyte.gz"):
        make_dataset("talking-digits", data_root=root)
    # a truncated WAV among the recordings
    root = tmp_path / "b"
    rec = root / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for p in (data_root / "fsdd" / "recordings").iterdir():
        os.symlink(p, rec / p.name)
    bad = rec / "7_theo_30.wav"
    bad.unlink()
    bad.write_bytes((data_root / "fsdd" / "recordings" / "7_theo_30.wav").read_bytes()[:300])
    shutil.copytree(data_root / "mnist", root / "mnist")
    with pytest.raises(SourceError, match="7_theo_30.wav.*truncated"):
        make_dataset("talking-digits", data_root=root)
    # a missing root
    with pytest.raises(SourceError, match="does not exist"):
        make_dataset("talking-digits", data_root=tmp_path / "nowhere")


# ----------------------------------------------------------------------------- `avgen data preview / stats`
@pytest.fixture
def caller_threads():
    """`avgen data stats` sets torch to one thread (the figure is per core) and leaves it so; the next
    tests in this process keep the count they had."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_data_preview_writes_the_clips_asked_for(tmp_path, capsys):
    import json

    from avgen.cli import main
    from avgen.data.given import read_given
    from avgen.data.io import decode_av

    out = tmp_path / "preview"
    assert main(["data", "preview", "--dataset", "shapes", "--split", "test", "--n", "2", "--start", "3",
                 "--scale", "2", "--out", str(out)]) == 0
    names = [f"clip_{i:04d}{ext}" for i in (3, 4) for ext in (".mp4", ".png")]
    assert capsys.readouterr().out.split() == [str(out / n) for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["clip_0003.json", "clip_0004.json"])
    ds = make_dataset("shapes", split="test")
    for i in (3, 4):
        clip = ds[i]
        side = json.loads((out / f"clip_{i:04d}.json").read_text())
        assert side["prompt"] == clip.prompt and side["events"] == [list(e) for e in clip.truth()]
        d = decode_av(out / f"clip_{i:04d}.mp4")
        assert d.frames.shape == (48, 64, 64, 3) and d.fps == 16  # --scale 2 of 32x32
        assert abs(len(d.audio) / d.sample_rate - 3.0) < 0.15
        picture, _ = read_given(out / f"clip_{i:04d}.mp4", ds.spec, "video")
        assert np.abs(picture - clip.frames).mean() < 0.01  # clip i itself, not another one
        assert (out / f"clip_{i:04d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.abs(picture - ds[3].frames).mean() > 0.02  # clip 4's picture is not clip 3's: the check tells them apart


def test_data_stats_counts_what_the_clips_hold(capsys, caller_threads):
    import json
    from collections import Counter

    from avgen.cli import main

    assert main(["data", "stats", "--dataset", "shapes", "--split", "test", "--n", "50", "--duration", "2"]) == 0
    stats = json.loads(capsys.readouterr().out)
    clips = [make_dataset("shapes", split="test", spec=ClipSpec(duration=2.0))[i] for i in range(50)]
    durations = [e.end_s - e.start_s for c in clips for e in c.events]
    assert (stats["dataset"], stats["split"]) == ("shapes", "test") and "trimming" not in stats
    assert stats["events_per_clip"] == {str(k): n for k, n in sorted(Counter(len(c.events) for c in clips).items())}
    assert sum(stats["events_per_clip"].values()) == 50
    assert stats["event_duration_s"] == {"median": float(np.median(durations)), "max": max(durations)}
    assert stats["clips_per_s_one_core"] > 0 and stats["setup_s"] >= 0


@pytest.mark.data
def test_data_preview_and_stats_on_talking_digits(data_root, tmp_path, capsys, caller_threads):
    """The trimming figures the README quotes come from this command, on all 3,000 FSDD files."""
    import json

    from avgen.cli import main

    ds = make_dataset("talking-digits", split="test", data_root=data_root)
    assert main(["data", "preview", "--split", "test", "--n", "1", "--data-root", str(data_root),
                 "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "clip_0000.mp4"), str(tmp_path / "clip_0000.png")]
    assert json.loads((tmp_path / "clip_0000.json").read_text())["prompt"] == ds[0].prompt
    assert main(["data", "stats", "--split", "test", "--n", "20", "--data-root", str(data_root)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["dataset"] == "talking-digits" and sum(stats["events_per_clip"].values()) == 20
    assert stats["event_duration_s"]["max"] == max(e.end_s - e.start_s for i in range(20) for e in ds[i].events)
    trim = stats["trimming"]
    assert trim["files"] == 3000
    assert trim["lead_in_removed"] == {"median_ms": 10.0, "p90_ms": 120.0, "p99_ms": 220.0, "max_ms": 540.0}
    assert trim["tail_removed"]["median_ms"] == 88.0 and round(trim["tail_removed"]["max_ms"]) == 980
    assert trim["files_with_lead_in_over_one_frame_before"] == 0.197
