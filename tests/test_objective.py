"""Rectified-flow objective: time sampling, prompts, the loss, and that it trains."""
import numpy as np
import pytest
import torch

from avgen.data import make_dataset
from avgen.data.clip import ClipSpec
from avgen.model.codec import AVCodec
from avgen.model.objective import (ObjectiveConfig, add_noise, draw_randomness, encode_prompts, sample_times,
                                   training_loss, x0_to_velocity)
from avgen.model.transformer import AVDiT

SPEC = ClipSpec(duration=1.0)


def gens(indices) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(1000 + i) for i in indices]


@pytest.fixture(scope="module")
def shapes_batch():
    ds = make_dataset("shapes", split="train", seed=0, spec=SPEC)
    clips = [ds[i] for i in range(4)]
    frames = torch.from_numpy(np.stack([c.frames for c in clips]))
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))
    ids, mask = encode_prompts([c.prompt.split() for c in clips], ds.vocab, ds.max_events)
    return ds, frames, audio, ids, mask


def tiny_model(vocab) -> AVDiT:
    torch.manual_seed(0)
    return AVDiT.from_preset("AVDiT-T", SPEC, vocab, 3)


def test_sample_times_distribution():
    t = sample_times(20_000, torch.Generator().manual_seed(0))
    v, a = t["video"], t["audio"]
    assert v.shape == a.shape == (20_000,)
    assert float(v.min()) >= 0 and float(v.max()) < 1
    assert not bool(((v == 0) & (a == 0)).any())  # never both clean
    assert float((v == 0).float().mean()) == pytest.approx(0.15, abs=0.01)
    assert float((a == 0).float().mean()) == pytest.approx(0.15, abs=0.01)
    noisy = v[v > 0]
    cfg = ObjectiveConfig()  # logit-normal(t_mean, t_std)
    assert float(torch.logit(noisy).mean()) == pytest.approx(cfg.t_mean, abs=0.05)
    assert float(torch.logit(noisy).std()) == pytest.approx(cfg.t_std, rel=0.05)
    other = sample_times(20_000, torch.Generator().manual_seed(0), ObjectiveConfig(t_mean=0.0, t_std=1.0))["video"]
    assert float(torch.logit(other[other > 0]).mean()) == pytest.approx(0.0, abs=0.05)


def test_low_noise_share():
    base = sample_times(20_000, torch.Generator().manual_seed(0))
    cfg = ObjectiveConfig(p_low=0.3, t_low=0.2)
    t = sample_times(20_000, torch.Generator().manual_seed(0), cfg)
    assert torch.equal(t["video"] == 0, base["video"] == 0)  # the same samples held clean: drawn before
    for m in ("video", "audio"):
        moved = (t[m] != base[m]) & (t[m] > 0)
        assert float(moved.float().mean()) == pytest.approx(0.3 * 0.85, abs=0.015)
        assert float(t[m][moved].max()) < 0.2 and float(t[m][moved].min()) > 0
        # uniform in (0, t_low): a quarter of the moved draws below t_low / 4
        assert float((t[m][moved] < 0.05).float().mean()) == pytest.approx(0.25, abs=0.02)
    assert not bool(((t["video"] == 0) & (t["audio"] == 0)).any())
    with pytest.raises(ValueError, match="p_low"):
        ObjectiveConfig(p_low=1.5)
    with pytest.raises(ValueError, match="t_low"):
        ObjectiveConfig(t_low=0.0)


def test_prompt_dropout_for_a_given_modality_is_its_own_rate_and_leaves_other_runs_as_they_were():
    """`p_drop_prompt_given` sets how often A2V / V2A samples train without a prompt; unset, every draw is
    what it was (old runs replay), and it is decided by the same random draw either way."""
    shapes = {"video": (4, 8), "audio": (4, 6)}
    n = 4000
    base = draw_randomness(torch.Generator().manual_seed(0), n, shapes, ObjectiveConfig(p_clean=0.25))
    given = (base.t["video"] == 0) | (base.t["audio"] == 0)
    assert abs(float(given.float().mean()) - 0.5) < 0.03
    assert abs(1 - float(base.keep_prompt[given].float().mean()) - 0.1) < 0.02  # unset: p_drop_prompt everywhere
    for rate in (0.0, 0.5, 1.0):
        cfg = ObjectiveConfig(p_clean=0.25, p_drop_prompt=0.15, p_drop_prompt_given=rate)
        d = draw_randomness(torch.Generator().manual_seed(0), n, shapes, cfg)
        assert all(torch.equal(d.t[m], base.t[m]) and torch.equal(d.noise[m], base.noise[m]) for m in d.t)
        assert abs(1 - float(d.keep_prompt[given].float().mean()) - rate) < 0.03
        assert abs(1 - float(d.keep_prompt[~given].float().mean()) - 0.15) < 0.02
    with pytest.raises(ValueError, match="p_drop_prompt_given must lie in"):
        ObjectiveConfig(p_drop_prompt_given=1.5)


def test_per_sample_generators_make_draws_independent_of_the_batch():
    for cfg in (ObjectiveConfig(), ObjectiveConfig(p_low=0.5)):
        both = sample_times(2, gens([0, 1]), cfg)
        alone = sample_times(1, gens([1]), cfg)
        assert torch.equal(both["video"][1:], alone["video"]) and torch.equal(both["audio"][1:], alone["audio"])


def test_encode_prompts():
    ids, mask = encode_prompts([["3", "1", "4"], ["7"], []], tuple("0123456789"), 3)
    assert ids.tolist() == [[3, 1, 4], [7, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    with pytest.raises(ValueError, match="unknown"):
        encode_prompts([["3", "x"]], tuple("0123456789"), 3)
    with pytest.raises(ValueError, match="events"):
        encode_prompts([["1", "2", "3", "4"]], tuple("0123456789"), 3)


def test_velocity_loss_is_a_weighted_x0_loss():
    g = torch.Generator().manual_seed(0)
    x0, noise, x0_pred = (torch.randn(3, 5, 7, generator=g) for _ in range(3))
    t = torch.tensor([0.9, 0.3, 0.02])
    x_t = add_noise(x0, noise, t)
    assert torch.allclose(x_t[0], 0.1 * x0[0] + 0.9 * noise[0])
    v_err = x0_to_velocity(x_t, x0_pred, t, t_min=0.05) - (noise - x0)
    expected = (x0 - x0_pred) / torch.tensor([0.9, 0.3, 0.05]).view(3, 1, 1)
    assert torch.allclose(v_err[:2], expected[:2], atol=1e-5)  # exact where t >= t_min
    assert torch.allclose(x0_to_velocity(x_t, x0, t), noise - x0, atol=1e-4)  # a perfect x0 gives v


def test_training_loss_stats(shapes_batch):
    ds, frames, audio, ids, mask = shapes_batch
    model = tiny_model(ds.vocab)
    loss, stats = training_loss(model, AVCodec(SPEC), frames, audio, ids, mask, gens(range(4)))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    assert set(stats) == {"loss", "loss_video", "loss_audio"}
    assert stats["loss"] == pytest.approx(float(loss.detach()))


class CleanSaboteur(torch.nn.Module):
    """Predicts an absurd x0 for a modality exactly when it is held clean (t = 0), zero otherwise."""

    def forward(self, video, audio, t_video, t_audio, prompt_ids, prompt_mask, cross_modal=True):
        bad = lambda x, t: torch.where(t.view(-1, 1, 1) == 0, torch.full_like(x, 1e6), torch.zeros_like(x))  # noqa: E731
        return {"video": bad(video, t_video), "audio": bad(audio, t_audio)}


def test_a_modality_held_clean_contributes_no_loss(shapes_batch):
    ds, frames, audio, ids, mask = shapes_batch
    cfg = ObjectiveConfig(p_clean=0.5)  # every sample holds exactly one modality clean
    t = sample_times(4, gens(range(4)), cfg)  # the same first draws training_loss makes
    assert int(((t["video"] == 0) | (t["audio"] == 0)).sum()) == 4
    loss, stats = training_loss(CleanSaboteur(), AVCodec(SPEC), frames, audio, ids, mask, gens(range(4)), cfg)
    assert float(loss) < 1e3  # a counted clean modality would add ~(1e6 / t_min)^2
    for m in ("video", "audio"):
        assert (stats[f"loss_{m}"] > 0) == bool((t[m] > 0).any())


def test_loss_splits_over_processes_like_one_batch(shapes_batch):
    """Per-sample generators keyed by the sample index: two half batches average to the full batch
    (what DDP over 2 processes computes), so training does not depend on the number of processes."""
    ds, frames, audio, ids, mask = shapes_batch
    model, codec = tiny_model(ds.vocab), AVCodec(SPEC)
    with torch.no_grad():
        full, _ = training_loss(model, codec, frames, audio, ids, mask, gens(range(4)))
        halves = [training_loss(model, codec, frames[s], audio[s], ids[s], mask[s], gens(range(4))[s])[0]
                  for s in (slice(0, 2), slice(2, 4))]
    assert float(full) == pytest.approx(float(sum(halves) / 2), rel=1e-5)


def test_same_generator_same_loss(shapes_batch):
    ds, frames, audio, ids, mask = shapes_batch
    model, codec = tiny_model(ds.vocab), AVCodec(SPEC)
    with torch.no_grad():
        a = training_loss(model, codec, frames, audio, ids, mask, torch.Generator().manual_seed(7))[0]
        b = training_loss(model, codec, frames, audio, ids, mask, torch.Generator().manual_seed(7))[0]
        c = training_loss(model, codec, frames, audio, ids, mask, torch.Generator().manual_seed(8))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("timeline", [False, True])
def test_draws_made_ahead_give_the_loss_the_generators_give(shapes_batch, timeline):
    """The data workers' path: every draw made up front from the same per-sample generators, then the
    loss from those draws, equals the loss drawing for itself (same order, bit for bit)."""
    ds, frames, audio, ids, mask = shapes_batch
    codec = AVCodec(SPEC)
    torch.manual_seed(0)
    model = AVDiT.from_preset("AVDiT-T", SPEC, ds.vocab, 3, timeline_cond=timeline)
    slots = torch.full((4, codec.num_tokens(SPEC.duration)), -1).long() if timeline else None
    cfg = ObjectiveConfig(p_low=0.2)
    shapes = {m: (codec.num_tokens(SPEC.duration), codec.dims[m]) for m in ("video", "audio")}
    with torch.no_grad():
        drawn = training_loss(model, codec, frames, audio, ids, mask, gens(range(4)), cfg, slots=slots)
        ahead = draw_randomness(gens(range(4)), 4, shapes, cfg, timeline=timeline)
        given = training_loss(model, codec, frames, audio, ids, mask, [], cfg, slots=slots, draws=ahead)
    assert torch.equal(drawn[0], given[0]) and drawn[1] == given[1]
    wrong = draw_randomness(gens(range(4)), 4, shapes, cfg, timeline=not timeline)
    with pytest.raises(ValueError, match="draws do not fit"):
        training_loss(model, codec, frames, audio, ids, mask, [], cfg, slots=slots, draws=wrong)
    # noise=False (noise_on_device): the same times, no noise, and a loss that asks for it
    bare = draw_randomness(gens(range(4)), 4, shapes, cfg, timeline=timeline, noise=False)
    assert bare.noise is None and all(torch.equal(bare.t[m], ahead.t[m]) for m in ("video", "audio"))
    assert bare.to("cpu").noise is None
    with pytest.raises(ValueError, match="without noise"):
        training_loss(model, codec, frames, audio, ids, mask, [], cfg, slots=slots, draws=bare)


@pytest.mark.slow  # ~5 s on an idle machine, 20 s on a busy one
def test_loss_falls_on_a_fixed_batch(shapes_batch):
    """30 AdamW steps on 4 fixed shapes clips (same noise and times every step) lower the loss."""
    ds, frames, audio, ids, mask = shapes_batch
    model, codec = tiny_model(ds.vocab), AVCodec(SPEC)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss, stats = training_loss(model, codec, frames, audio, ids, mask, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["loss"])
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_the_label_probe_learns_what_a_clean_modality_shows_and_is_off_by_default(shapes_batch):
    """`label_weight` > 0: the probe's cross-entropy on the tokens of the modality held clean is added to the
    loss (against each token's ground-truth label, 0 outside events) and it learns; at 0 the loss is the
    plain flow loss, and a model without the probe is refused when asked for it."""
    from avgen.model.batch import clip_slots

    ds, frames, audio, ids, mask = shapes_batch
    slots = clip_slots([ds[i] for i in range(4)], 1)
    torch.manual_seed(0)
    model = AVDiT.from_preset("AVDiT-T", SPEC, ds.vocab, 3, timeline_cond=True, label_probe=True)
    codec = AVCodec(SPEC)
    plain = ObjectiveConfig(p_clean=0.5)
    probed = ObjectiveConfig(p_clean=0.5, label_weight=1.0)
    with torch.no_grad():
        base, base_stats = training_loss(model, codec, frames, audio, ids, mask, gens(range(4)), plain, slots=slots)
        with_probe, stats = training_loss(model, codec, frames, audio, ids, mask, gens(range(4)), probed, slots=slots)
    # at initialisation the probe is zero: uniform over "no event" + 8 glyphs
    assert stats["label_ce"] == pytest.approx(np.log(1 + len(ds.vocab)), rel=1e-5)
    assert float(with_probe) == pytest.approx(float(base) + stats["label_ce"], rel=1e-5)
    assert "label_ce" not in base_stats
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(40):
        opt.zero_grad()
        loss, stats = training_loss(model, codec, frames, audio, ids, mask, gens(range(4)), probed, slots=slots)
        loss.backward()
        opt.step()
    assert stats["label_ce"] < 0.5 * np.log(1 + len(ds.vocab))  # it learned what the clean clips show
    assert max(stats["label_acc_video"], stats["label_acc_audio"]) > 0.8
    with pytest.raises(ValueError, match="needs a model with the label probe"):
        training_loss(tiny_model(ds.vocab), codec, frames, audio, ids, mask, gens(range(4)), probed, slots=slots)
