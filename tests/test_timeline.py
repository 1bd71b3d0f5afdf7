"""Timelines on the token clock (branch `timeline`, work in progress)."""
import numpy as np
import pytest

from avgen.model.timeline import LayoutPrior, slots_from_events, unknown_slot


def test_slots_follow_the_events_on_token_centres():
    slots = slots_from_events([("3", 0.25, 0.5), ("1", 1.0, 1.25)], num_tokens=32, token_seconds=1 / 16)
    assert slots[4:8].tolist() == [1, 1, 1, 1] and slots[16:20].tolist() == [2, 2, 2, 2]
    assert (slots[:4] == 0).all() and (slots[8:16] == 0).all() and (slots[20:] == 0).all()
    assert unknown_slot(3) == 4


def test_the_prior_draws_ordered_events_with_gaps_and_is_seeded():
    prior = LayoutPrior({"3": {4: 2, 5: 1}, "1": {3: 7}}, min_gap=3)
    a = prior.draw(["3", "1", "3"], 48, np.random.default_rng(0))
    b = prior.draw(["3", "1", "3"], 48, np.random.default_rng(0))
    assert np.array_equal(a, b)
    runs = [(v, len(list(g))) for v, g in __import__("itertools").groupby(a.tolist())]
    events = [(v, n) for v, n in runs if v]
    assert [v for v, _ in events] == [1, 2, 3] and events[1][1] == 3
    gaps = [n for v, n in runs[1:-1] if v == 0]
    assert all(n >= 3 for n in gaps)
    with pytest.raises(ValueError, match="no event lengths"):
        prior.draw(["7"], 48, np.random.default_rng(0))
    with pytest.raises(ValueError, match="do not fit"):
        prior.draw(["3"] * 10, 20, np.random.default_rng(0))
    again = LayoutPrior.from_dict(__import__("json").loads(__import__("json").dumps(prior.to_dict())))
    assert again.counts == prior.counts and again.min_gap == 3


def test_the_timeline_input_starts_at_zero_and_then_reaches_the_tokens():
    import torch
    from tests.test_transformer import inputs, randomised, tiny

    model = tiny(timeline_cond=True)
    x = inputs()
    slots = torch.zeros(2, 16, dtype=torch.long)
    slots[0, 2:6], slots[0, 8:11], slots[1, 4:9] = 1, 2, 1
    with torch.no_grad():
        plain = randomised(tiny(timeline_cond=True), skip="slot")
        assert float(plain.slot_embed.weight.abs().max()) == 0.0
        a, b = plain(**x), plain(**x, slots=slots)
        assert all(torch.equal(a[m], b[m]) for m in a)  # zero-initialised: no effect yet
        model = randomised(model)
        c, d = model(**x), model(**x, slots=slots)
        assert (c["video"] - d["video"]).abs().max() > 1e-3 and (c["audio"] - d["audio"]).abs().max() > 1e-3
        other = slots.clone()
        other[1, 4:9] = 0
        e = model(**x, slots=other)
        assert torch.equal(e["video"][0], d["video"][0]) and not torch.equal(e["video"][1], d["video"][1])
    with pytest.raises(ValueError, match="slots must have shape"):
        model(**x, slots=slots[:, :3])


def test_training_feeds_the_ground_truth_timeline_and_learns_its_embedding(tmp_path):
    import math

    from safetensors.torch import load_file

    from avgen.train.config import preset
    from avgen.train.loop import clip_slots, train
    from avgen.data import make_dataset

    ds = make_dataset("shapes", split="train", spec=preset("tiny").spec)
    clips = [ds[i] for i in range(3)]
    slots = clip_slots(clips, 1)
    for c, row in zip(clips, slots):
        assert int(row.max()) == len(c.events) and (row >= 0).all()
    cfg = preset("tiny", {"dataset": "shapes", "steps": 8, "model.timeline_cond": True})
    r = train(cfg, tmp_path / "run", progress_bar=False)
    assert math.isfinite(r.last_loss)
    state = load_file(str(r.checkpoint))
    learned = [k for k in state if "slot_embed" in k]
    assert learned and any(float(state[k].abs().max()) > 0 for k in learned)  # it was trained through slots
    from avgen.train.loop import build_dataset, build_model

    model = build_model(cfg, build_dataset(cfg))  # the layout prior travels in the model's config
    prior = LayoutPrior.from_dict(model.config.layout_prior)
    assert set(prior.counts) <= set(model.config.vocab) and prior.min_gap >= 1


def test_the_prior_is_measured_from_ground_truth_clips():
    from avgen.data import make_dataset
    from avgen.data.clip import ClipSpec

    ds = make_dataset("shapes", split="train", spec=ClipSpec(duration=1.5, height=8, width=8))
    clips = [ds[i] for i in range(50)]
    prior = LayoutPrior.measure(clips, frames_per_token=1, min_gap_frames=3)
    seen = {lab for c in clips for lab, *_ in c.truth()}
    assert set(prior.counts) == seen and prior.min_gap == 3
    total = sum(sum(h.values()) for h in prior.counts.values())
    assert total == sum(len(c.events) for c in clips)


def test_the_pipeline_draws_a_timeline_for_text_and_none_for_a_given_modality(monkeypatch):
    import torch
    from avgen.model.pipeline import AVGenPipeline
    from avgen.model.transformer import AVDiT
    from avgen.data.clip import ClipSpec

    spec = ClipSpec(duration=1.0)
    prior = LayoutPrior({"3": {3: 1}, "1": {2: 1}}, min_gap=3).to_dict()
    model = AVDiT.from_preset("AVDiT-T", spec, tuple("0123456789"), 3, timeline_cond=True, layout_prior=prior)
    pipe = AVGenPipeline.from_transformer(model.eval())
    pipe.set_progress_bar_config(disable=True)
    seen = []
    forward = pipe.transformer.forward
    monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: seen.append(k.get("slots")) or forward(*a, **k))
    pipe("3 1", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    slots = seen[-1][0]
    assert sorted(set(slots.tolist())) == [0, 1, 2] and (slots == 1).sum() == 3 and (slots == 2).sum() == 2
    seen.clear()
    pipe("3 1", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[-1][0], slots)  # one seed, one timeline
    pipe("3 1", num_inference_steps=2, audio=np.zeros(8000, np.float32), generator=torch.Generator().manual_seed(0))
    assert (seen[-1] == 4).all()  # A2V: unknown
    with pytest.raises(ValueError, match="slot ids"):
        pipe("3 1", num_inference_steps=1, timeline=np.full(5, 1))


def test_a_pretrained_model_grows_the_timeline_input_exactly():
    import torch
    from avgen.train.loop import grow
    from tests.test_transformer import inputs, randomised, tiny

    old = randomised(tiny(timeline_cond=False))
    prior = LayoutPrior({"3": {3: 1}}, min_gap=3).to_dict()
    grown = grow(old, {"timeline_cond": True, "count_cond": True}, lambda m: None, prior).eval()
    assert grown.config.timeline_cond and grown.config.layout_prior == prior
    slots = torch.randint(0, 5, (2, 16))
    with torch.no_grad():
        a, b = old(**inputs()), grown(**inputs(), slots=slots)
    assert all(torch.equal(a[m], b[m]) for m in a)
    with pytest.raises(ValueError, match="needs a layout prior"):
        grow(old, {"timeline_cond": True}, lambda m: None)
