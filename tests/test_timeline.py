"""Timelines on the token clock: slot ids, the layout prior, the model input, training and sampling."""
import numpy as np
import pytest

from avgen.model.timeline import LayoutPrior, events_from_slots, slots_from_events, unknown_slot


def test_slots_follow_the_events_on_token_centres():
    slots = slots_from_events([("3", 0.25, 0.5), ("1", 1.0, 1.25)], num_tokens=32, token_seconds=1 / 16)
    assert slots[4:8].tolist() == [1, 1, 1, 1] and slots[16:20].tolist() == [2, 2, 2, 2]
    assert (slots[:4] == 0).all() and (slots[8:16] == 0).all() and (slots[20:] == 0).all()
    assert unknown_slot(3) == 4
    # and back: the planned events on the token grid
    assert events_from_slots(slots, ["3", "1"], 1 / 16) == [("3", 0.25, 0.5), ("1", 1.0, 1.25)]
    assert events_from_slots(np.full(32, 4), ["3", "1"], 1 / 16) == []  # unknown: no plan


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
    unseen = prior.draw(["7"], 48, np.random.default_rng(0))  # a label the data never showed: pooled lengths
    assert (unseen == 1).sum() in (3, 4, 5)
    with pytest.raises(ValueError, match="do not fit"):
        prior.draw(["3"] * 10, 20, np.random.default_rng(0))
    short = prior.draw(["3", "1", "3"], 12, np.random.default_rng(0))  # shorter than the data's events: shrunk
    assert sorted(set(short.tolist())) == [0, 1, 2, 3]
    assert (prior.draw(["3", "1", "3"], 9, np.random.default_rng(0)) > 0).sum() == 3  # one token each
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
    from avgen.model.batch import clip_slots
    from avgen.train.loop import train
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


def test_generated_clips_carry_their_plan_and_eval_scores_against_it(tmp_path, monkeypatch):
    import json

    from avgen.data.clip import ClipSpec
    from avgen.api import generate as gen
    from avgen.api.evaluate import generated_items
    from avgen.api.records import write_outputs
    from avgen.model.pipeline import AVGenPipeline
    from avgen.model.transformer import AVDiT

    spec = ClipSpec(duration=1.0)
    prior = LayoutPrior({d: {3: 1} for d in "0123456789"}, min_gap=3).to_dict()
    model = AVDiT.from_preset("AVDiT-T", spec, tuple("0123456789"), 3, timeline_cond=True, layout_prior=prior)
    pipe = AVGenPipeline.from_transformer(model.eval())
    pipe.set_progress_bar_config(disable=True)
    settings = gen.GenerateSettings(prompt="3 1", steps=2, seed=4, duration=1.0)
    clip = gen.generate(pipe, settings)[0]
    plan = clip.meta["timeline"]
    assert [lab for lab, *_ in plan] == ["3", "1"] and all(abs(e - s - 3 / 16) < 1e-9 for _, s, e in plan)
    assert plan[1][1] - plan[0][2] >= 3 / 16 - 1e-9  # the prior's minimum gap
    assert gen.generate(pipe, settings)[0].meta["timeline"] == plan  # one seed, one plan
    from dataclasses import replace
    assert gen.generate(pipe, replace(settings, timeline=False))[0].meta["timeline"] == []  # --no-timeline: unknown
    with pytest.raises(ValueError, match="timeline must be true or false"):
        replace(settings, timeline="yes").check()
    pipe.save_pretrained(tmp_path / "w")
    paths = write_outputs([clip], tmp_path / "clip.mp4", settings, pipe, tmp_path / "w", "cpu")
    assert json.loads(paths[0].with_suffix(".json").read_text())["timeline"] == [list(e) for e in plan]
    # eval --generate: the plan is the generated clip's ground truth for the *_gt onset scores
    items = generated_items(pipe, settings.replace(seed=0), 2, tmp_path / "gen")
    assert all(it.truth is not None and len(it.truth.video) == len(it.prompt.split()) for it in items)
    assert items[0].truth.video == items[0].truth.audio


def test_a2v_and_v2a_read_the_timeline_from_the_given_modality():
    from avgen.data import make_dataset
    from avgen.data.clip import ClipSpec
    from avgen.data.prompt import Prompt
    from avgen.model.conditioning import timeline_from_given
    from avgen.model.transformer import AVDiT

    spec = ClipSpec(duration=3.0, height=16, width=16)
    ds = make_dataset("shapes", split="test", spec=spec)
    vocab = list(ds.vocab)
    prior = LayoutPrior({v: {3: 1} for v in vocab}, min_gap=3).to_dict()
    model = AVDiT.from_preset("AVDiT-T", spec, vocab, 3, timeline_cond=True, layout_prior=prior).eval()
    n = spec.num_frames
    for i in range(4):
        clip = ds[i]
        truth = slots_from_events(clip.truth(), n, 1 / spec.fps)
        labels = [Prompt(tuple(clip.prompt.split()))]
        from_video = timeline_from_given(model, spec, 1, clip.frames[None], None, labels, n)[0]
        from_audio = timeline_from_given(model, spec, 1, None, clip.audio[None], labels, n)[0]
        assert (from_video != truth).sum() <= 2 and (from_audio != truth).sum() <= 2, i
        # a prompt whose count the given modality does not show: the timeline stays unknown
        wrong = [clip.prompt.split() + [vocab[0]] * (3 - len(clip.events))] if len(clip.events) < 3 else [[vocab[0]]]
        wrong = [Prompt(tuple(w)) for w in wrong]
        assert (timeline_from_given(model, spec, 1, None, clip.audio[None], wrong, n)[0] == unknown_slot(3)).all()


def test_a_folder_of_clips_without_events_trains_without_a_timeline(tmp_path, monkeypatch):
    import dataclasses
    import json
    import math

    from avgen.data import make_dataset
    from avgen.data.io import write_mp4
    from avgen.train.config import preset
    from avgen.train.loop import train

    spec = preset("tiny").spec
    src = make_dataset("shapes", split="test", spec=spec)
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(2):
        # captions, but a still picture and silence: no event to detect, so no timeline is derived
        still = dataclasses.replace(src[i], frames=np.repeat(src[i].frames[:1], len(src[i].frames), 0),
                                    audio=np.zeros_like(src[i].audio))
        write_mp4(still, folder / f"c{i}.mp4")
        (folder / f"c{i}.txt").write_text(src[i].prompt)
    monkeypatch.setenv("AVGEN_CACHE", str(tmp_path / "cache"))
    said = []
    cfg = preset("tiny", {"dataset": f"folder:{folder}", "steps": 2})
    assert cfg.model.timeline_cond  # the default
    r = train(cfg, tmp_path / "run", progress_bar=False, log=said.append)
    assert any("no ground-truth events" in s for s in said)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["timeline_cond"] is False
    assert r.step == 2 and math.isfinite(r.last_loss)  # it trained, on finite losses (inf == inf would pass ==)
    # fine-tuning weights without the input on such data does not ask for a timeline either
    from avgen.train.export import export_run
    export_run(tmp_path / "run", tmp_path / "w")
    said.clear()
    train(cfg, tmp_path / "run2", init_from=tmp_path / "w", progress_bar=False, log=said.append)
    assert any("no timeline input" in s for s in said)
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["model"]["timeline_cond"] is False


def test_a_run_begun_before_the_timeline_input_resumes_without_it(tmp_path):
    import json

    from avgen.train.config import preset
    from avgen.train.loop import train

    cfg = preset("tiny", {"dataset": "shapes", "steps": 2, "model.timeline_cond": False})
    train(cfg, tmp_path / "run", progress_bar=False)
    path = tmp_path / "run" / "config.json"
    old = json.loads(path.read_text())
    del old["model"]["timeline_cond"]  # as written by an avgen without the input
    path.write_text(json.dumps(old))
    from avgen.train.record import read_run_config
    resumed = read_run_config(tmp_path / "run").override({"steps": 4})
    assert resumed.model.timeline_cond is False
    assert train(resumed, tmp_path / "run", resume=True, progress_bar=False).checkpoint.name.endswith("4.safetensors")
