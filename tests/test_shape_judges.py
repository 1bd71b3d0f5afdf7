"""The shapes template judges read the generator's own glyphs and tones, and refuse to be fooled by
octaves, loudness, silence or noise."""
from __future__ import annotations

import numpy as np
import pytest

from avgen.data.shapes import GLYPHS, Shapes, glyph_mask, tone
from avgen.eval.judges import image_input
from avgen.signal.onsets import Detected
from avgen.eval.shape_judges import ShapeJudges


@pytest.fixture(scope="module")
def judges():
    return ShapeJudges.build()


def test_every_glyph_is_read_at_random_sizes_and_places(judges):
    rng = np.random.default_rng(0)
    inputs, truth = [], []
    for g in GLYPHS:
        for _ in range(6):
            size, cy, cx = 32 * rng.uniform(0.25, 0.38), 16 + rng.uniform(-2.5, 2.5), 16 + rng.uniform(-2.5, 2.5)
            frame = glyph_mask(g, 32, 32, size, cy, cx) * rng.uniform(0.7, 1.0)
            inputs.append(image_input(np.stack([frame] * 4)))
            truth.append(g)
    reading = judges.image(inputs)
    assert reading.labels == truth
    assert reading.probs.shape == (len(truth), len(GLYPHS)) and np.allclose(reading.probs.sum(1), 1)


def test_every_tone_is_read_at_any_loudness_and_octaves_are_not_confused(judges):
    sr = 8000
    sounds = [tone(f, int(sr * d), sr, level) for f in GLYPHS.values() for d, level in ((0.25, 0.2), (0.8, 0.8))]
    assert judges.speech(sounds).labels == [g for g in GLYPHS for _ in range(2)]
    # square 220 Hz, cross 440 Hz and bar 880 Hz share partials: the best wrong score stays far below
    scores = judges.speech([tone(440.0, 4000, sr, 0.5)]).embeddings[0]
    assert scores[list(GLYPHS).index("cross")] > 0.9 > 0.6 > np.delete(scores, list(GLYPHS).index("cross")).max()


def test_noise_and_silence_read_as_nothing_in_particular(judges):
    rng = np.random.default_rng(1)
    noise = judges.speech([rng.normal(size=4000).astype(np.float32)]).embeddings[0]
    assert noise.max() < 0.5
    silent = judges.speech([np.zeros(4000, np.float32)])
    assert np.all(silent.embeddings == 0)
    blank = judges.image([image_input(np.zeros((3, 32, 32), np.float32))])
    assert np.all(blank.embeddings == 0)
    assert judges.image([]).labels == [] and judges.speech([]).labels == []


def test_a_rendered_clip_is_read_through_the_suite(judges):
    from avgen.signal.onsets import AVSignal

    ds = Shapes("test", seed=3)
    clip = ds[0]
    sig = AVSignal.from_clip(clip)
    labels = [e.label for e in clip.events]
    evs = [Detected(e.start_s, e.end_s, 1.0) for e in clip.events]
    assert judges.image([judges.image.prepare(sig, ev) for ev in evs]).labels == labels
    assert judges.speech([judges.speech.prepare(sig, ev) for ev in evs]).labels == labels
