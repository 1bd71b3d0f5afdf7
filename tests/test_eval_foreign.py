"""The controls on clips that are not ours: 25 fps, 44.1 kHz stereo, 64x48 RGB, a textured background
that drifts and flickers, written as mp4 (H.264 + AAC) and webm (VP9 + Opus) and read back.

The builders below make such clips from the `shapes` (no data needed) and Talking Digits
generators at a foreign `ClipSpec`, so ground truth is known exactly while nothing about the
files matches what avgen writes itself.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from avgen.data import ClipSpec, make_dataset
from avgen.data.clip import Clip
from avgen.data.io import to_uint8_rgb, write_video
from avgen.signal.onsets import AVSignal
from avgen.eval.suite import EvalConfig, Item, analyse, evaluate, load_signal, shift_clip

FOREIGN = ClipSpec(duration=3.0, height=48, width=64, channels=3, fps=25, sample_rate=44100)
FAST = EvalConfig(av_align=False)


def textured_background(spec: ClipSpec, seed: int, n_frames: int) -> np.ndarray:
    """(T, H, W, 3): tinted cloud-like texture (grain ~6 px, +-0.1 in brightness) drifting 12 px/s
    to the right, its lighting +-10 % over the clip."""
    rng = np.random.default_rng(seed)
    grey = gaussian_filter(rng.standard_normal((spec.height, spec.width * 2)), sigma=6)
    tint = gaussian_filter(rng.standard_normal((spec.height, spec.width * 2, 3)), sigma=(6, 6, 0))
    wide = 0.3 + 0.1 * (grey / grey.std())[..., None] + 0.04 * tint / tint.std()
    frames = []
    for t in range(n_frames):
        x0 = 12 * t / spec.fps  # a continuous pan: sub-pixel steps, linearly interpolated
        whole, frac = int(x0), x0 - int(x0)
        moved = (1 - frac) * np.roll(wide, whole, axis=1) + frac * np.roll(wide, whole + 1, axis=1)
        light = 1 + 0.1 * np.sin(2 * np.pi * t / n_frames)
        frames.append(moved[:, : spec.width] * light)
    return np.clip(np.stack(frames), 0, 1).astype(np.float32)


def foreign(clip: Clip, seed: int, shift_ms: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A clip (its sound shifted as `avgen eval --shift-ms` does) over a moving texture with stereo
    sound (left louder, a little hiss on the right): uint8 frames (T, H, W, 3) and audio (S, 2)."""
    clip = shift_clip(clip, shift_ms)[0] if shift_ms else clip
    alpha = clip.frames.max(axis=3, keepdims=True)  # where the glyph / digit is drawn
    frames = textured_background(FOREIGN, seed, clip.num_frames) * (1 - alpha) + clip.frames
    mono = clip.audio
    hiss = np.random.default_rng(seed).standard_normal(len(mono)).astype(np.float32) * 1e-3
    return to_uint8_rgb(frames), np.stack([0.9 * mono, 0.6 * mono + hiss], axis=1)


AUDIO_BITRATE = 128_000  # a usual rate for 44.1 kHz stereo; at 64 kb/s AAC's pre-echo moves ~10 % of
# sharp onsets ~20 ms early, which is the file's content, not the reader's error


def write_foreign(ds, index: int, path, shift_ms: float = 0.0):
    clip = ds[index]
    frames, audio = foreign(clip, index, shift_ms)
    return write_video(path, frames, FOREIGN.fps, audio, FOREIGN.sample_rate, audio_bitrate=AUDIO_BITRATE), clip


@pytest.fixture(scope="module")
def foreign_shapes(tmp_path_factory):
    d = tmp_path_factory.mktemp("foreign")
    ds = make_dataset("shapes", split="test", spec=FOREIGN)
    return ds, d


def gt_items(ds, d, n, fmt="mp4", shift_ms=0.0):
    from avgen.eval.suite import Truth

    items = []
    for i in range(n):
        path, clip = write_foreign(ds, i, d / f"c{i}_{shift_ms:+g}.{fmt}", shift_ms)
        _, dv, da = shift_clip(clip, shift_ms)
        truth = [e.start_s for e in clip.events]
        items.append(Item(path, clip.prompt, Truth([t + dv for t in truth], [t + da for t in truth])))
    return items


def test_the_foreign_files_really_are_foreign(foreign_shapes):
    ds, d = foreign_shapes
    from avgen.data.io import decode_av

    path, _ = write_foreign(ds, 0, d / "probe.webm")
    dec = decode_av(path)
    assert dec.fps == 25 and dec.frames.shape[1:] == (48, 64, 3) and dec.audio.shape[1] == 2
    assert dec.sample_rate == 48000  # Opus resamples; the reader must cope
    assert dec.frames[0].std() > 5  # a textured, not a flat, background


def test_foreign_ceiling_mp4(foreign_shapes):
    ds, d = foreign_shapes
    rep = evaluate(gt_items(ds, d, 12), FAST)
    s = rep.summary
    assert s["n_errors"] == 0
    assert s["onset_f1_video_gt"]["mean"] >= 0.95 and s["onset_f1_audio_gt"]["mean"] >= 0.95
    assert s["median_abs_offset_ms"]["value"] <= 15 and s["onset_f1"]["mean"] >= 0.95


@pytest.fixture(scope="module")
def foreign_base(foreign_shapes):
    ds, d = foreign_shapes
    return evaluate(gt_items(ds, d, 10), FAST).clips


@pytest.mark.parametrize("shift_ms", [-80.0, 30.0, 160.0])  # 25 fps: 2 frames, 30 ms, 4 frames
def test_foreign_shift_moves_the_offset(foreign_shapes, foreign_base, shift_ms):
    ds, d = foreign_shapes
    base = foreign_base
    moved = evaluate(gt_items(ds, d, 10, shift_ms=shift_ms), FAST).clips
    deltas = np.array([m["av_offset_ms"] - b["av_offset_ms"] for m, b in zip(moved, base)])
    assert np.mean(np.abs(deltas - shift_ms) <= 15) >= 0.9, deltas


def test_foreign_mp4_and_webm_agree_with_the_raw_clip(foreign_shapes):
    ds, d = foreign_shapes
    close = []
    for i in range(8):
        clip = ds[i]
        frames, audio = foreign(clip, i)
        raw = AVSignal(frames.astype(np.float32).mean(axis=3) / 255, np.arange(len(frames)) / FOREIGN.fps,
                       float(FOREIGN.fps), audio.mean(axis=1), FOREIGN.sample_rate)
        raw_off = analyse(raw, FAST).record["av_offset_ms"]
        for fmt in ("mp4", "webm"):
            path, _ = write_foreign(ds, i, d / f"agree{i}.{fmt}")
            close.append(abs(analyse(load_signal(path, FAST), FAST).record["av_offset_ms"] - raw_off) <= 10)
    assert np.mean(close) >= 0.9


def test_foreign_unrelated_sound_falls_to_the_onset_floor(foreign_shapes):
    ds, d = foreign_shapes
    f1 = []
    for i in range(10):
        clip = ds[i]
        other = ds[i + 100]  # an independent clip's sound: unrelated event times
        scrambled = Clip(clip.frames, other.audio, clip.fps, clip.sample_rate, clip.events)
        frames, audio = foreign(scrambled, i)
        path = write_video(d / f"rand{i}.mp4", frames, FOREIGN.fps, audio, FOREIGN.sample_rate,
                           audio_bitrate=AUDIO_BITRATE)
        f1.append(analyse(load_signal(path, FAST), FAST).record["onset_f1"])
    assert np.nanmean(f1) < 0.4


@pytest.mark.data
def test_foreign_talking_digits_ceiling(tmp_path, data_root):
    ds = make_dataset("talking-digits", split="test", spec=FOREIGN, data_root=data_root)
    rep = evaluate(gt_items(ds, tmp_path, 10, fmt="webm"), FAST)
    s = rep.summary
    assert s["onset_f1_video_gt"]["mean"] >= 0.95 and s["onset_f1_audio_gt"]["mean"] >= 0.95
    assert s["median_abs_offset_ms"]["value"] <= 15
