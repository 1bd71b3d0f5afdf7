"""AVDiT: shapes, shared clock, cross-modal switch, prompt handling, save/load, determinism."""
import pytest
import torch
import torch.nn.functional as F

from avgen.data.clip import ClipSpec
from avgen.model.config import MODEL_PRESETS, model_config
from avgen.model.transformer import AVDiT, apply_rope, build_layout, rope_angles, rope_tables

SPEC = ClipSpec(duration=1.0)  # 16 tokens per modality keeps these tests fast
VOCAB = tuple("0123456789")


def tiny(seed: int = 0, **overrides) -> AVDiT:
    torch.manual_seed(seed)
    return AVDiT.from_preset("AVDiT-T", SPEC, VOCAB, max_events=3, **overrides).eval()


def randomised(model: AVDiT, seed: int = 1, skip: str | None = None) -> AVDiT:
    """Give every parameter (zero-initialised ones too) a random value, except names containing `skip`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if skip is None or skip not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = SPEC.num_frames
    return dict(video=torch.randn(batch, n, 1024, generator=g), audio=torch.randn(batch, n, 516, generator=g),
                t_video=torch.rand(batch, generator=g), t_audio=torch.rand(batch, generator=g),
                prompt_ids=torch.tensor([[3, 1, 4], [7, 0, 0]])[:batch],
                prompt_mask=torch.tensor([[True, True, True], [True, False, False]])[:batch])


def test_shapes_and_zero_init():
    model = tiny()
    with torch.no_grad():
        out = model(**inputs())
    assert out["video"].shape == (2, 16, 1024) and out["audio"].shape == (2, 16, 516)
    # AdaLN-Zero + zero output layers: a fresh model predicts exactly zero
    assert all(float(x.abs().max()) == 0.0 for x in out.values())
    with torch.no_grad():
        out = randomised(model)(**inputs())
    assert all(torch.isfinite(x).all() and x.abs().max() > 0 for x in out.values())


def test_presets_and_overrides():
    assert set(MODEL_PRESETS) >= {"AVDiT-T", "AVDiT-S", "AVDiT-B"}
    assert model_config("AVDiT-S").hidden_size == 256 and model_config("AVDiT-B").depth == 8
    assert model_config("AVDiT-S", depth=2).depth == 2
    with pytest.raises(ValueError, match="unknown model preset 'AVDiT-XXL'; choose one of AVDiT-T"):
        model_config("AVDiT-XXL")
    with pytest.raises(ValueError, match=r"unknown ModelConfig option\(s\) \['widht'\]"):
        model_config("AVDiT-S", widht=3)


def test_rope_is_a_function_of_time_shared_by_both_modalities():
    times = (torch.arange(16) + 0.5) / 16
    layout = build_layout(torch.ones(1, 3, dtype=torch.bool), 16, times, head_dim=32, cross_modal=True,
                          min_period_s=0.125, max_period_s=32.0)
    cos, sin = layout.rope
    video_phase, audio_phase = (cos[:16], sin[:16]), (cos[16:32], sin[16:32])
    assert all(map(torch.equal, video_phase, audio_phase))  # token n of each modality: same instant, same phase
    assert cos.shape == sin.shape == (32, 32)  # media tokens only: prompt tokens are not rotated
    assert layout.self_mask.shape == (1, 1, 32, 3 + 32)  # media queries read [prompt | media] keys
    assert not torch.equal(video_phase[0][0], video_phase[0][1])
    # attention between rotated vectors depends only on the time difference
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(tq: float, tk: float) -> float:
        angles = lambda t: rope_tables(rope_angles(torch.tensor([t]), 32, 0.125, 32.0))  # noqa: E731
        return float((apply_rope(q, angles(tq)) * apply_rope(k, angles(tk))).sum())

    assert score(0.5, 0.25) == pytest.approx(score(2.0, 1.75), abs=1e-4)
    assert score(0.5, 0.25) != pytest.approx(score(0.5, 0.5), abs=1e-3)


def test_rope_rotates_each_channel_pair_by_its_angle():
    """The three-op form equals the rotation of pair (i, i + hd/2) by angle i, written out."""
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    angles = torch.rand(5, 4, dtype=torch.float64) * 6
    x1, x2, cos, sin = x[..., :4], x[..., 4:], angles.cos(), angles.sin()
    expected = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    assert torch.allclose(apply_rope(x, rope_tables(angles)), expected, atol=1e-12)


def test_layout_bias_is_the_mask_as_attention_reads_it():
    """The additive bias made once per forward gives attention exactly what the boolean mask gives."""
    valid = torch.tensor([[True, False, True], [True, True, True]])
    layout = build_layout(valid, 4, (torch.arange(4) + 0.5) / 16, head_dim=8, cross_modal=True,
                          min_period_s=0.125, max_period_s=32.0)
    q, k, v = (torch.randn(2, 2, 8, 8) for _ in range(3))
    kp, vp = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8)
    for name, keys, values in (("self_mask", torch.cat([kp, k], 2), torch.cat([vp, v], 2)), ("cross_mask", k, v)):
        bias = layout.bias(name, torch.float32)
        assert layout.bias(name, torch.float32) is bias  # made once, shared by every block
        assert layout.bias(name, torch.float64).dtype == torch.float64  # one per dtype (autocast)
        mask = getattr(layout, name)
        assert torch.equal(bias == 0, mask.expand_as(bias)) and torch.isinf(bias[~mask.expand_as(bias)]).all()
        assert torch.equal(F.scaled_dot_product_attention(q, keys, values, attn_mask=bias),
                           F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))


def test_attention_gates_the_cross_pass_per_modality_and_per_sample():
    """Attention against its formula written out with the boolean masks: the own pass over
    [prompt | own modality], plus the cross pass scaled by that modality's gate (distinct random
    gates per modality and channel) for samples whose cross path is open, then the projection."""
    from avgen.model.transformer import Attention
    torch.manual_seed(0)
    attn = Attention(32, 4)
    with torch.no_grad():
        for gate in attn.cross_gate.values():
            gate.copy_(torch.randn(32))
    n, valid = 5, torch.tensor([[True, True, False], [True, False, False]])
    layout = build_layout(valid, n, (torch.arange(n) + 0.5) / 16, head_dim=8,
                          cross_modal=torch.tensor([True, False]), min_period_s=0.125, max_period_s=32.0)
    h, kp, vp = torch.randn(2, 2 * n, 32), torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)
    with torch.no_grad():
        got = attn(h, layout, kp, vp)
        q, k, v = attn.project(h, layout.rope)
        own = F.scaled_dot_product_attention(q, torch.cat([kp, k], 2), torch.cat([vp, v], 2),
                                             attn_mask=layout.self_mask)
        cross = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.cross_mask)
        own, cross = (x.transpose(1, 2).reshape(2, 2 * n, 32) for x in (own, cross))
        gate = torch.cat([attn.cross_gate["video"].expand(n, -1), attn.cross_gate["audio"].expand(n, -1)])  # (2n, 32)
        keep = torch.tensor([1.0, 0.0])[:, None, None]
        expected = attn.proj(own + gate * keep * cross)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got[0], attn.proj(own)[0], atol=1e-3)  # the open sample's cross pass counts
    assert torch.allclose(got[1], attn.proj(own)[1], atol=1e-6)  # the closed one's does not


def test_model_uses_seconds_not_indices():
    """Token times come from the stored token duration: a 2-frames-per-token model rotates token n
    by the angles of time (n + 0.5) * 2 / fps."""
    from avgen.model.config import CodecConfig
    model = AVDiT.from_preset("AVDiT-T", SPEC, VOCAB, 3, codec=CodecConfig(frames_per_token=2))
    assert model.config.token_seconds == pytest.approx(2 / 16)
    assert torch.allclose(model.default_token_times(3, "cpu"), torch.tensor([1, 3, 5]) / 16)


def test_cross_modal_false_blocks_information():
    model = randomised(tiny())
    x = inputs()
    changed = dict(x, audio=x["audio"] + torch.randn_like(x["audio"]))
    with torch.no_grad():
        open_a, open_b = model(**x)["video"], model(**changed)["video"]
        assert (open_a - open_b).abs().max() > 1e-3  # the path exists and is used when open
        closed_a = model(**x, cross_modal=False)["video"]
        closed_b = model(**changed, cross_modal=False)["video"]
        assert torch.equal(closed_a, closed_b)
        # per-sample switch: sample 0 open, sample 1 closed
        per = torch.tensor([True, False])
        mixed_a, mixed_b = model(**x, cross_modal=per)["video"], model(**changed, cross_modal=per)["video"]
        assert (mixed_a[0] - mixed_b[0]).abs().max() > 1e-3
        assert torch.equal(mixed_a[1], mixed_b[1])
        # and the other direction: video does not reach audio when closed
        moved = dict(x, video=x["video"] + 1.0)
        assert torch.equal(model(**x, cross_modal=False)["audio"], model(**moved, cross_modal=False)["audio"])


def test_cross_modal_path_starts_at_zero():
    """With the cross-modal gates at their initial zero, audio cannot influence video even when open."""
    model = randomised(tiny(), skip="cross_gate")
    x = inputs()
    with torch.no_grad():
        a = model(**x)["video"]
        b = model(**dict(x, audio=torch.randn_like(x["audio"])))["video"]
    assert torch.equal(a, b)


def test_prompt_padding_is_ignored_and_null_prompt_differs():
    model = randomised(tiny())
    x = inputs()
    with torch.no_grad():
        base = model(**x)
        garbage = dict(x, prompt_ids=x["prompt_ids"].clone())
        garbage["prompt_ids"][1, 1:] = torch.tensor([9, 8])  # masked-out slots of sample 1
        assert torch.equal(model(**garbage)["video"][1], base["video"][1])
        null = dict(x, prompt_mask=torch.zeros_like(x["prompt_mask"]))
        assert (model(**null)["video"] - base["video"]).abs().max() > 1e-3
        order = dict(x, prompt_ids=torch.tensor([[4, 1, 3], [7, 0, 0]]))  # ordinal embedding: order matters
        assert (model(**order)["video"][0] - base["video"][0]).abs().max() > 1e-3


def test_prompt_states_encoded_once_give_the_same_prediction():
    """The prompt stream depends on the prompt alone: its states encoded once for a [cond | uncond]
    batch, rows picked per pass as the sampler does, give the prediction of a forward that encodes
    them itself, for a count- and timeline-conditioned model too."""
    model = randomised(tiny(count_cond=True, timeline_cond=True))
    x = dict(inputs(), slots=torch.randint(0, 5, (2, 16), generator=torch.Generator().manual_seed(3)))
    null = dict(x, prompt_ids=torch.zeros(2, 3, dtype=torch.long), prompt_mask=torch.zeros(2, 3, dtype=torch.bool))
    with torch.no_grad():
        both = model.encode_prompt_states(torch.cat([x["prompt_ids"], null["prompt_ids"]]),
                                          torch.cat([x["prompt_mask"], null["prompt_mask"]]))
        assert len(both.keys) == len(model.blocks) and both.keys[0].shape == (4, model.config.num_heads, 3, model.head_dim)
        for case, rows in ((x, [0, 1]), (null, [2, 3])):
            cached = model(**case, prompt_states=both.select(torch.tensor(rows)))
            direct = model(**case)
            for m in ("video", "audio"):
                # float32 rounding of a batch of 4 against 2, relative to the outputs (magnitude ~30, where
                # an absolute 1e-5 was ~5 ulps, too tight for a change of op order such as RoPE's)
                assert torch.allclose(cached[m], direct[m], atol=2e-6 * float(direct[m].abs().max()), rtol=0)
                assert direct[m].abs().max() > 1e-2  # a live network, not zeros
        with pytest.raises(ValueError, match="encode them from this call"):
            model(**x, prompt_states=both)  # 4 rows of states for a call of 2


def test_modulation_table_over_steps_gives_the_same_prediction():
    """A sampler's table of AdaLN outputs, computed once for every step and [cond | uncond] row in one
    matmul per layer and selected per step, gives the prediction of a forward that computes its own."""
    model = randomised(tiny(count_cond=True, timeline_cond=True))
    x = inputs()
    null_mask = torch.zeros_like(x["prompt_mask"])
    sigmas = torch.tensor([1.0, 0.6, 0.2])
    rows_t = sigmas.repeat_interleave(4)  # per step: 2 cond rows, then 2 uncond rows
    masks = torch.cat([x["prompt_mask"], null_mask]).repeat(3, 1)
    with torch.no_grad():
        table = model.modulation(rows_t, torch.zeros_like(rows_t), masks)  # audio given clean (t = 0)
        assert table.rows == 12 and table.blocks[0]["video"].shape == (12, 6 * model.config.hidden_size)
        for i, sigma in enumerate(sigmas):
            for mask, first in ((x["prompt_mask"], 4 * i), (null_mask, 4 * i + 2)):
                case = dict(x, prompt_mask=mask, t_video=sigma.repeat(2), t_audio=torch.zeros(2))
                cached = model(**case, modulation=table.select(torch.arange(first, first + 2)))
                direct = model(**case)
                for m in ("video", "audio"):
                    err = float((cached[m] - direct[m]).abs().max() / direct[m].abs().max())
                    assert err < 1e-5, (i, m, err)  # rounding of a batched vs a one-row matmul
        # the table is what the forward uses: another step's rows give another prediction
        case = dict(x, t_video=sigmas[0].repeat(2), t_audio=torch.zeros(2))
        other = model(**case, modulation=table.select(torch.arange(8, 10)))["video"]
        assert (other - model(**case)["video"]).abs().max() > 1e-2
        with pytest.raises(ValueError, match="compute it from this call"):
            model(**x, modulation=table)  # 12 rows for a call of 2


def test_each_modality_is_modulated_by_its_own_noise_level():
    model = randomised(tiny())
    x = inputs()
    with torch.no_grad():
        base = model(**x)
        other = model(**dict(x, t_audio=x["t_audio"] * 0.5))
    # with the cross path closed, changing t_audio only changes the audio prediction
    with torch.no_grad():
        closed = model(**x, cross_modal=False)
        closed_t = model(**dict(x, t_audio=x["t_audio"] * 0.5), cross_modal=False)
    assert (base["audio"] - other["audio"]).abs().max() > 1e-3
    assert torch.equal(closed["video"], closed_t["video"])


def test_save_load_round_trip(tmp_path):
    model = randomised(tiny())
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AVDiT.from_pretrained(tmp_path, local_files_only=True).eval()
    stored = lambda cfg: {k: v for k, v in cfg.items() if k != "_name_or_path"}  # noqa: E731
    assert stored(loaded.config) == stored(model.config)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert all(torch.equal(u, v) for u, v in zip(model(**inputs()).values(), loaded(**inputs()).values()))
    assert loaded.config.clip_spec == SPEC.to_dict() and list(loaded.config.vocab) == list(VOCAB)


def test_same_seed_same_model_same_output():
    a, b = tiny(seed=3), tiny(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    randomised(a, seed=5), randomised(b, seed=5)
    with torch.no_grad():
        assert torch.equal(a(**inputs())["audio"], b(**inputs())["audio"])


def test_token_count_mismatch_raises():
    x = inputs()
    with pytest.raises(ValueError, match="video has 16 tokens and audio 15: one token per frame each"):
        tiny()(**dict(x, audio=x["audio"][:, :-1]))


def test_the_prompt_count_reaches_every_token_and_starts_at_zero():
    model = tiny()
    assert model.config.count_cond and float(model.count_embed.weight.detach().abs().max()) == 0.0
    model = randomised(model)
    x = inputs()
    # the same labels in the valid slots, but a different count: only the count input sees the difference
    with torch.no_grad():
        base = model(**x)
        model.count_embed.weight.zero_()
        no_count = model(**x)
    assert (base["video"] - no_count["video"]).abs().max() > 1e-3
    assert (base["audio"] - no_count["audio"]).abs().max() > 1e-3


def test_weights_made_before_the_count_input_load_without_it_and_can_grow_it(tmp_path):
    from avgen.train.loop import grow

    old = randomised(tiny(count_cond=False))
    assert old.count_embed is None
    old.save_pretrained(tmp_path)
    cfg = (tmp_path / "config.json")
    import json
    stored = json.loads(cfg.read_text())
    del stored["count_cond"]  # as written by the versions before the key existed
    cfg.write_text(json.dumps(stored))
    loaded = AVDiT.from_pretrained(tmp_path, local_files_only=True).eval()
    assert not loaded.config.count_cond and loaded.count_embed is None
    grown = grow(loaded, {"count_cond": True}, lambda msg: None).eval()
    assert grown.config.count_cond and float(grown.count_embed.weight.detach().abs().max()) == 0.0
    with torch.no_grad():  # a zero count embedding: the grown model computes exactly what the old one did
        assert all(torch.equal(u, v) for u, v in zip(loaded(**inputs()).values(), grown(**inputs()).values()))
    assert grow(loaded, {"count_cond": False}, lambda msg: None) is loaded


def test_a_grey_model_coloured_for_rgb_computes_what_it_did_on_grey_frames():
    """`surgery.colour`: the RGB model reads each pixel's luma and writes its grey into every channel, so a
    grey clip (R = G = B) gets the pretrained model's prediction, channel for channel."""
    from avgen.train.surgery import colour

    grey = randomised(tiny())
    rgb = colour(grey, 3, lambda msg: None).eval()
    assert rgb.config.clip_spec["channels"] == 3 and rgb.config.video_dim == 3 * grey.config.video_dim
    x = inputs()
    x_rgb = dict(x, video=x["video"].repeat_interleave(3, dim=-1))  # tokens are (frame, h, w, c), c innermost
    with torch.no_grad():
        want, got = grey(**x), rgb(**x_rgb)
    assert torch.allclose(got["audio"], want["audio"], atol=1e-5)
    assert torch.allclose(got["video"], want["video"].repeat_interleave(3, dim=-1), atol=1e-5)
    assert colour(rgb, 3, lambda msg: None) is rgb and colour(grey, 1, lambda msg: None) is grey
    # the colour matters to the coloured model: a red and a blue frame of the same grey differ
    red, blue = x["video"].clone(), x["video"].clone()
    red = torch.stack([red, -torch.ones_like(red), -torch.ones_like(red)], -1).flatten(-2)
    blue = torch.stack([-torch.ones_like(blue), -torch.ones_like(blue), blue], -1).flatten(-2)
    with torch.no_grad():
        assert (rgb(**dict(x, video=red))["audio"] - rgb(**dict(x, video=blue))["audio"]).abs().max() > 1e-3


def test_the_ffn_activation_is_named_by_the_config_and_older_configs_keep_tanh(tmp_path):
    """`mlp_activation`: the presets take the exact GELU; a config written before the key existed
    means the tanh approximation it was trained with; the two are close but not the same function."""
    import json

    from avgen.model.config import ModelConfig
    from avgen.train.config import TrainConfig

    assert all(cfg.mlp_activation == "gelu" for cfg in MODEL_PRESETS.values())
    with pytest.raises(ValueError, match="mlp_activation must be one of"):
        model_config("AVDiT-T", mlp_activation="relu")
    exact = randomised(tiny())
    assert exact.config.mlp_activation == "gelu" and exact.blocks[0].ffn["audio"][1].approximate == "none"
    exact.save_pretrained(tmp_path)
    cfg = tmp_path / "config.json"
    stored = json.loads(cfg.read_text())
    assert stored["mlp_activation"] == "gelu"
    del stored["mlp_activation"]  # as written by the versions before the key existed
    cfg.write_text(json.dumps(stored))
    old = AVDiT.from_pretrained(tmp_path, local_files_only=True).eval()
    assert old.config.mlp_activation == "gelu_tanh" and old.blocks[0].ffn["video"][1].approximate == "tanh"
    with torch.no_grad():
        a, b = exact(**inputs()), old(**inputs())  # the same weights under the two activations
    for m in a:
        gap = float((a[m] - b[m]).abs().max() / a[m].abs().max())
        assert 0 < gap < 1e-3, (m, gap)  # 3e-5 here
    # a run's saved training config from before the key resumes with the activation it started with
    saved = TrainConfig().to_dict()
    del saved["model"]["mlp_activation"]
    assert TrainConfig.from_dict(saved).model == ModelConfig(**{**saved["model"], "mlp_activation": "gelu_tanh"})
