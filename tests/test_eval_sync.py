"""Onset envelopes, event detection, offset estimation, onset matching and AV-Align, on synthetic
signals and on `shapes` clips (no data files needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from avgen.data import make_dataset
from avgen.signal.onsets import (AVSignal, OnsetConfig, arrivals, audio_track, detect_events, envelope, onsets, shrink,
                               tracks, video_track)
from avgen.eval.suite import Control, EvalConfig, analyse, control_clip
from avgen.eval.sync import (av_align, estimate_offset, match_onsets, peak_pick, reference_audio_onsets,
                             reference_video_peaks)

GRID = 0.002


def impulses(times, n=1500, grid=GRID) -> np.ndarray:
    """Unit impulses split linearly between grid points (as `envelope` deposits them)."""
    out = np.zeros(n + 1)
    for t in times:
        pos = t / grid
        i = int(np.floor(pos))
        out[i] += 1 - (pos - i)
        out[i + 1] += pos - i
    return out[:n]


# ----------------------------------------------------------------------------- offset
@pytest.mark.parametrize("delay_ms", [-375.0, -62.5, -30.0, 0.0, 7.3, 30.0, 125.0, 437.0])
def test_offset_recovers_a_known_delay_with_sign_audio_late_positive(delay_ms):
    onsets_v = [0.31, 0.92, 1.77, 2.41]
    video = impulses(onsets_v)
    audio = impulses([t + delay_ms / 1000 for t in onsets_v if 0 < t + delay_ms / 1000 < 2.99])
    est = estimate_offset(video, audio, GRID)
    assert est.offset_ms == pytest.approx(delay_ms, abs=1.0)  # sub-grid (2 ms) accuracy
    assert est.confidence > 0.3


def test_offset_of_a_flat_envelope_is_undefined_not_zero():
    est = estimate_offset(impulses([1.0]), np.zeros(1500), GRID)
    assert math.isnan(est.offset_ms) and est.confidence == 0.0


def test_offset_confidence_is_low_for_unrelated_onsets():
    rng = np.random.default_rng(0)
    video = impulses(sorted(rng.uniform(0.1, 2.9, 3)))
    related = estimate_offset(video, video, GRID).confidence
    unrelated = np.median([estimate_offset(video, impulses(sorted(rng.uniform(0.1, 2.9, 3))), GRID).confidence
                           for _ in range(20)])
    assert related > 2 * unrelated  # chance alignments of one pair out of three score ~1/3


# ----------------------------------------------------------------------------- matching
def test_matching_is_one_to_one_and_within_tolerance():
    m = match_onsets([1.0, 2.0], [0.99, 1.01, 2.05], tol_s=0.0625)
    assert len(m.pairs) == 2 and m.precision == pytest.approx(2 / 3) and m.recall == 1.0
    assert m.f1 == pytest.approx(0.8)
    far = match_onsets([1.0], [1.0626], tol_s=0.0625)
    assert far.f1 == 0.0


def test_matching_maximises_pairs_not_greedy_closeness():
    # greedy closest-first would pair 1.05 with 1.0 and leave 0.99 and 1.10 unmatched
    m = match_onsets([0.99, 1.10], [1.05, 0.93], tol_s=0.0625)
    assert len(m.pairs) == 2 and m.f1 == 1.0


def test_matching_edge_cases():
    assert math.isnan(match_onsets([], [], 0.06).f1)
    assert match_onsets([1.0], [], 0.06).f1 == 0.0 and match_onsets([], [1.0], 0.06).f1 == 0.0


# ----------------------------------------------------------------------------- envelopes and events
def synthetic_signal(onsets_s, fps=16, sr=8000, duration=3.0, level=0.5):
    """Squares on black while a 440 Hz tone sounds, 0.3 s each."""
    t_frames = int(duration * fps)
    frames = np.zeros((t_frames, 32, 32), np.float32)
    audio = np.zeros(int(duration * sr), np.float32)
    for t in onsets_s:
        frames[int(round(t * fps)): int(round((t + 0.3) * fps)), 10:22, 10:22] = 1.0
        a, b = int(t * sr), int((t + 0.3) * sr)
        audio[a:b] = level * np.sin(2 * np.pi * 440 * np.arange(b - a) / sr)
    return AVSignal(frames, np.arange(t_frames) / fps, float(fps), audio, sr)


def test_video_flux_sees_appearances_not_disappearances():
    sig = synthetic_signal([0.5])
    t, f = arrivals(video_track(sig))
    assert t[np.argmax(f)] == pytest.approx(0.5)  # the boundary where frame 8 appears
    end = np.argmin(np.abs(t - 0.8125))  # the square vanishes at frame 13
    assert f[end] == 0.0


def test_events_are_detected_in_both_modalities_at_the_true_onsets():
    truth = [0.25, 1.125, 2.0]
    sig = synthetic_signal(truth)
    for track in tracks(sig).values():
        found = onsets(detect_events(track))
        assert len(found) == 3 and np.allclose(found, truth, atol=0.01)


def test_silence_and_blank_frames_have_no_events():
    sig = synthetic_signal([])
    assert all(detect_events(t) == [] for t in tracks(sig).values())


def test_envelope_keeps_sub_grid_timing():
    sig = synthetic_signal([0.5])
    env = envelope(video_track(sig), 0.003, 1000)  # 0.5 s is not on a 3 ms grid
    centre = np.sum(np.arange(len(env)) * env) / env.sum() * 0.003
    assert centre == pytest.approx(0.5, abs=1e-6)


def test_loudness_does_not_move_events():
    loud, quiet = synthetic_signal([1.0], level=0.9), synthetic_signal([1.0], level=0.01)
    a, b = (onsets(detect_events(audio_track(s))) for s in (loud, quiet))
    assert len(a) == len(b) == 1 and abs(a[0] - b[0]) < 0.004


def test_sound_onsets_favour_starts_out_of_quiet():
    sr = 16000
    t = np.arange(3 * sr) / sr
    audio = np.zeros_like(t)
    word = (t >= 0.5) & (t < 1.2)
    audio[word] = 0.5 * np.sin(2 * np.pi * 300 * t[word])
    second = (t >= 0.8) & (t < 1.2)  # a new "syllable" inside the word: another pitch, as loud
    audio[second] = 0.5 * np.sin(2 * np.pi * 1200 * t[second])
    echo = (t >= 1.95) & (t < 2.0)  # codec pre-echo: faint noise 50 ms before a sharp onset
    audio[echo] = 0.002 * np.random.default_rng(0).standard_normal(echo.sum())
    audio[t >= 2.0] = 0.5 * np.sin(2 * np.pi * 600 * t[t >= 2.0])
    sig = AVSignal(np.zeros((48, 8, 8), np.float32), np.arange(48) / 16, 16.0, audio.astype(np.float32), sr)
    times, values = arrivals(audio_track(sig))
    near = lambda a, b: values[(times >= a) & (times <= b)].max()  # noqa: E731
    assert near(0.48, 0.52) > 10 * near(0.78, 0.82)  # the word, not its second syllable
    # the onset, not the noise smeared before it (whose rise is seen from ~1.935 s on; the tone's
    # own from 1.984 s: half a 16 ms window plus half the 16 ms lag)
    assert near(1.985, 2.02) > 10 * near(1.93, 1.975)


def test_shrink_is_an_area_mean():
    x = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    y = shrink(x, 4)
    assert y.shape == (2, 4, 4) and y[0, 0, 0] == pytest.approx(x[0, :2, :2].mean())


# ----------------------------------------------------------------------------- shapes controls (no data needed)
FAST = EvalConfig(av_align=False)


@pytest.fixture(scope="module")
def shapes():
    return make_dataset("shapes", split="test")


@pytest.fixture(scope="module")
def shapes_base_offsets(shapes):
    return [analyse(AVSignal.from_clip(shapes[i]), FAST).record["av_offset_ms"] for i in range(20)]


def test_shapes_ceiling_in_memory(shapes):
    f1_v, f1_a, offs = [], [], []
    for i in range(24):
        clip, truth = control_clip(shapes, i, Control(), 24, 0)
        rec = analyse(AVSignal.from_clip(clip), FAST, truth=truth).record
        f1_v.append(rec["onset_f1_video_gt"])
        f1_a.append(rec["onset_f1_audio_gt"])
        offs.append(rec["av_offset_ms"])
        assert rec["onset_f1"] == 1.0
    assert min(f1_v) == 1.0 and min(f1_a) == 1.0
    assert np.nanmedian(np.abs(offs)) <= 15.0


@pytest.mark.parametrize("shift_ms", [-375.0, -125.0, -62.5, 30.0, 62.5, 250.0])
def test_shapes_shift_moves_the_offset_by_the_shift(shapes, shapes_base_offsets, shift_ms):
    hits, f1 = 0, []
    for i, base in enumerate(shapes_base_offsets):
        clip, _ = control_clip(shapes, i, Control(shift_ms=shift_ms), 20, 0)
        rec = analyse(AVSignal.from_clip(clip), FAST).record
        hits += abs(rec["av_offset_ms"] - base - shift_ms) <= 15.0
        f1.append(rec["onset_f1"])
    assert hits >= 19  # >= 95 %
    if abs(shift_ms) > 62.5:  # past one frame the onsets no longer match
        assert np.nanmean(f1) < 0.3


def test_peak_pick_follows_librosas_rule():
    x = np.zeros(50)
    x[[10, 11, 30]] = [0.5, 1.0, 0.8]
    peaks = peak_pick(x, pre_max=1, post_max=1, pre_avg=4, post_avg=5, delta=0.07, wait=1)
    # post_max=1 looks at x[n-1 : n+1], i.e. not ahead: 10 is a peak, and 11 falls in its wait
    assert list(peaks) == [10, 30]


def test_av_align_reference_form_on_a_clean_clip():
    sig = synthetic_signal([0.5, 1.5, 2.5])  # squares and tones, 0.3 s each, cut without fades
    # flow peaks where a square appears and where it vanishes (t / fps of the later frame)
    assert list(reference_video_peaks(sig)) == [0.5, 0.8125, 1.5, 1.8125, 2.5, 2.8125]
    # librosa-style onsets: each tone's start, and its abrupt end (a broadband click)
    audio = reference_audio_onsets(sig.audio, sig.sample_rate)
    assert np.allclose(audio, [0.5, 0.8125, 1.5, 1.8125, 2.5, 2.8125], atol=0.02)
    assert av_align(sig) == 1.0
    assert av_align(synthetic_signal([0.5, 1.5, 2.5], level=0.0)) == 0.0  # no audio peak: 0 of 6


def test_config_rejects_a_grid_that_is_not_whole_samples():
    with pytest.raises(ValueError, match=r"grid_s \* audio_rate must be a whole number of samples, got 19.68"):
        _ = OnsetConfig(grid_s=0.00123).hop
