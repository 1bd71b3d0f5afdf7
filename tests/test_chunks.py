"""Long clips in windows, context held by the sampler, temporal inpainting, and the seam figures."""
import numpy as np
import pytest
import torch

from avgen.api.generate import Edit, GenerateSettings, generate
from avgen.api.settings import parse_spans
from avgen.cli import main
from avgen.eval.seams import seam_record, seam_windows
from avgen.model.chunks import Window, edit_slots, events_of, local_timeline, plan_windows
from avgen.model.pipeline import load_pipeline
from avgen.model.timeline import LayoutPrior
from tests.demo_helpers import tiny_weights  # noqa: F401  (fixture)
from tests.test_pipeline import seeded, tiny_pipeline


def slots_with(events, n):
    s = np.zeros(n, np.int64)
    for k, (a, b) in enumerate(events):
        s[a:b] = k + 1
    return s


def test_windows_cover_the_clip_overlap_and_end_in_silence():
    events = [(5, 12), (20, 28), (40, 47), (55, 63), (70, 80), (90, 99), (110, 118), (130, 140)]
    slots = slots_with(events, 150)
    ws = plan_windows(slots, 150, window=48, overlap=16, max_events=3)
    assert ws[0].start == 0 and ws[0].new_from == 0 and ws[-1].end == 150
    for prev, w in zip(ws, ws[1:]):
        assert w.new_from == prev.end and w.start == prev.end - 16
    for w in ws:
        assert w.end - w.start <= 48
        inside = [e for e in events_of(slots) if e[1] < w.end and e[2] > w.start]
        assert len(inside) <= 3
        assert not any(a < w.end < b for a, b in events), "an event split between windows"
    assert len(ws) <= 5  # 150 tokens in windows adding about 32 each, not a crawl of short ones


def test_a_short_clip_is_one_window_and_a_crowded_timeline_is_refused():
    assert plan_windows(None, 40, 48, 16, 3) == [Window(0, 40, 0)]
    fixed = plan_windows(None, 100, 48, 16, 3)  # no timeline: windows of the full length
    assert [(w.start, w.end, w.new_from) for w in fixed] == [(0, 48, 0), (32, 80, 48), (64, 100, 80)]
    crowded = slots_with([(2 * k, 2 * k + 1) for k in range(40)], 100)
    with pytest.raises(ValueError, match="more than 3 events"):
        plan_windows(crowded, 100, 48, 16, 3)


def test_local_timeline_renumbers_the_windows_events():
    slots = slots_with([(0, 4), (6, 9), (12, 15)], 20)
    labels, local = local_timeline(slots, ("7", "1", "4"), plan_windows(slots, 20, 48, 8, 3)[0])
    assert labels == ("7", "1", "4") and np.array_equal(local, slots)
    labels, local = local_timeline(slots, ("7", "1", "4"), Window(5, 20, 5))
    assert labels == ("1", "4") and local[1] == 1 and local[7] == 2 and local[0] == 0


def test_edit_slots_keep_unknown_and_place_the_labels_in_order_in_the_free_runs():
    prior = LayoutPrior({"3": {3: 1}, "7": {2: 1}}, min_gap=1)
    free = np.zeros(30, bool)
    free[5:12] = free[20:28] = True
    s = edit_slots(prior, ("3", "7"), free, np.random.default_rng(0), max_events=3)
    assert (s[~free] == 4).all()
    assert set(np.unique(s[5:12])) <= {0, 1} and (s[5:12] == 1).sum() == 3
    assert set(np.unique(s[20:28])) <= {0, 2} and (s[20:28] == 2).sum() == 2
    assert (edit_slots(prior, (), free, np.random.default_rng(0), 3) == 4).all()


def test_context_tokens_end_at_their_values_and_steer_the_rest(monkeypatch):
    pipe = tiny_pipeline()
    n = pipe.codec.num_tokens()
    known = {m: torch.randn(1, n, d, generator=seeded(4)) for m, d in pipe.codec.dims.items()}
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, :5] = True
    out = pipe("3", num_inference_steps=4, generator=seeded(0), output_type="latent",
               context_latents=known, context_mask=mask)
    plain = pipe("3", num_inference_steps=4, generator=seeded(0), output_type="latent")
    assert torch.equal(out.frames[:, :5], known["video"][:, :5]) and torch.equal(out.audio[:, :5], known["audio"][:, :5])
    assert not torch.allclose(out.frames[:, 5:], plain.frames[:, 5:])
    with pytest.raises(ValueError, match="context_mask has shape"):
        pipe("3", num_inference_steps=2, context_latents=known, context_mask=mask[:, :3])


def timeline_pipeline():
    """A tiny random network with a timeline input and a layout prior (events of 6-10 tokens)."""
    from avgen.data.clip import ClipSpec
    from avgen.model.pipeline import AVGenPipeline
    from avgen.model.transformer import AVDiT

    torch.manual_seed(0)
    prior = LayoutPrior({d: {6: 1, 8: 2, 10: 1} for d in "0123456789"}, min_gap=2).to_dict()
    model = AVDiT.from_preset("AVDiT-T", ClipSpec(), tuple("0123456789"), 3, layout_prior=prior,
                              timeline_cond=True, count_cond=True)
    pipe = AVGenPipeline.from_transformer(model.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("with_timeline", [True, False])
def test_a_long_clip_is_made_in_windows_deterministically_with_its_seams(tiny_weights, with_timeline):
    pipe = timeline_pipeline() if with_timeline else load_pipeline(tiny_weights)
    pipe.set_progress_bar_config(disable=True)
    s = GenerateSettings(prompt="3 1 4 1 5 9", duration=9.0, steps=2, seed=2)
    a, b = generate(pipe, s)[0], generate(pipe, s)[0]
    assert a.frames.shape == (144, 32, 32, 1) and a.audio.shape == (72000,)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert len(a.meta["seams_s"]) >= 3
    if with_timeline:
        assert [lab for lab, _, _ in a.meta["timeline"]] == list("314159")
    with pytest.raises(ValueError, match="at most 6"):
        generate(pipe, s.replace(prompt="1 2 3 4 5 6 7 8 9 0"))


def test_each_window_continues_the_last_with_the_same_tokens(monkeypatch):
    """Window k's context is window k - 1's result, token for token, in both modalities."""
    pipe = timeline_pipeline()
    calls, call = [], type(pipe).__call__

    def spy(self, *a, **kw):
        out = call(self, *a, **kw)
        if kw.get("context_mask") is not None:
            calls.append((kw["context_latents"], kw["context_mask"], out))
        return out

    monkeypatch.setattr(type(pipe), "__call__", spy)
    pipe("3 1 4 1", duration_s=7.0, num_inference_steps=2, generator=seeded(0))
    assert len(calls) >= 3
    for (_, _, prev), (ctx, mask, _) in zip(calls, calls[1:]):
        k = int(mask.sum())
        assert k == 16 and torch.equal(ctx["video"][0, :k], prev.frames[0, -k:])
        assert torch.equal(ctx["audio"][0, :k], prev.audio[0, -k:])


def test_an_edit_keeps_the_picture_of_its_kept_spans_exactly(tiny_weights):
    pipe = load_pipeline(tiny_weights)
    pipe.set_progress_bar_config(disable=True)
    src = generate(pipe, GenerateSettings(prompt="3 1 4", steps=2, seed=1))[0]
    edit = Edit(src.frames, src.audio, parse_spans("0:1,2:3"))
    out = generate(pipe, GenerateSettings(prompt="7", steps=2, seed=5), edit=edit)[0]
    fps = src.fps
    for lo, hi in edit.keep:
        assert np.abs(out.frames[int(lo * fps):int(hi * fps)] - src.frames[int(lo * fps):int(hi * fps)]).max() < 1e-5
    assert np.abs(out.frames[fps:2 * fps] - src.frames[fps:2 * fps]).max() > 1e-2
    sr = src.sample_rate  # the kept sound is the clip's own samples, away from the 10-ms crossfades
    for lo, hi in ((0, int(0.98 * sr)), (int(2.02 * sr), 3 * sr)):
        assert np.array_equal(out.audio[lo:hi], src.audio[lo:hi].astype(np.float32))
    with pytest.raises(ValueError, match="whole clip"):
        generate(pipe, GenerateSettings(prompt="7", steps=2), edit=Edit(src.frames, src.audio, [(0, 3)]))


def test_cli_edit_needs_both_flags_and_says_so_in_one_line(tiny_weights, tmp_path, capsys):
    code = main(["generate", "7", "--weights", str(tiny_weights), "--out", str(tmp_path / "o.mp4"),
                 "--keep", "0:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--edit" in err
    code = main(["generate", "7", "--weights", str(tiny_weights), "--out", str(tmp_path / "o.mp4"),
                 "--edit", str(tmp_path / "x.mp4"), "--keep", "1-2"])
    assert code == 2 and "START:END" in capsys.readouterr().err


def test_seam_windows_tile_the_clip_and_the_record_counts_each_side():
    near, away = seam_windows([3.0, 7.0], 12.0, 1.0)
    assert near == [(2.0, 4.0), (6.0, 8.0)] and away == [(0.0, 2.0), (4.0, 6.0), (8.0, 10.0), (10.0, 12.0)]
    rec = {"duration_s": 12.0, "video_onsets_s": [0.5, 2.5, 6.5, 9.0], "audio_onsets_s": [0.51, 2.55, 9.0]}
    r = seam_record(rec, [3.0, 7.0], 0.2, radius=1.0)
    assert r["seam_count_counts"] == [1, 2] and r["elsewhere_count_counts"] == [4, 4]
    assert r["seam_event_offset_ms"] == pytest.approx(50.0) and r["elsewhere_event_offset_ms"] == pytest.approx(5.0)
    near, away = seam_windows([2.0, 4.0, 6.0], 8.0, 0.5)  # the default radius: seam and away windows alternate
    assert near == [(1.5, 2.5), (3.5, 4.5), (5.5, 6.5)] and away == [(0.0, 1.0), (2.5, 3.5), (4.5, 5.5), (6.5, 7.5)]


def test_silence_before_the_first_event_and_between_events_is_held_not_sampled(monkeypatch):
    """Windows with nothing planned (after silence) copy the silence before them, and a first event later
    than the first window could reach starts the windows there: the network is only run where events are."""
    from avgen.model.chunks import plan_clip

    row = slots_with([(100, 108), (150, 158)], 200)
    lead, plan = plan_clip(row, 200, 48, 16, 3)
    assert lead == Window(0, 84, 0) and plan[0] == Window(84, 132, 84) and plan[-1].end == 200
    pipe = timeline_pipeline()
    out = pipe("3", duration_s=12.0, num_inference_steps=2, generator=seeded(3), output_type="latent")
    slots = out.timeline[0]
    lead, plan = plan_clip(slots, len(slots), 48, 16, 3)
    video = out.frames[0]
    if lead.end:
        assert torch.equal(video[:lead.end], video[lead.end].expand(lead.end, -1))
    held = [w for w in plan if w.new_from and not slots[w.new_from - 1:w.end].any()]
    assert lead.end + sum(w.end - w.new_from for w in held) >= 192 - 48, "at most one window is sampled"
    for w in held:
        assert torch.equal(video[w.new_from:w.end], video[w.new_from - 1].expand(w.end - w.new_from, -1))
