"""AVGenPipeline and the generate library/CLI: shapes, samplers, guidance batching, A2V / V2A,
determinism, save/load, sidecars."""
import json

import numpy as np
import pytest
import torch

from avgen.data.clip import ClipSpec
from avgen.api.generate import GenerateSettings, generate
from avgen.api.records import write_outputs
from avgen.model.config import DEFAULT_GUIDANCE_INTERVAL
from avgen.model.pipeline import AVGenPipeline, load_pipeline
from avgen.model.sampler import SAMPLERS, Guidance
from avgen.model.transformer import AVDiT
from tests.demo_helpers import tiny_weights  # noqa: F401  (fixture)

SPEC = ClipSpec(duration=1.0)  # 16 frames, 8000 samples
ODE_SAMPLERS = sorted(s for s in SAMPLERS if s != "fast")  # the fast sampler (a distilled student): test_student.py


def tiny_pipeline(sampler: str = "euler") -> AVGenPipeline:
    torch.manual_seed(0)
    model = AVDiT.from_preset("AVDiT-T", SPEC, tuple("0123456789"), 3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights everywhere (gates too), so every path is exercised
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    pipe = AVGenPipeline.from_transformer(model.eval(), sampler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ForwardSpy:
    """Records the batch size and inputs of every transformer call."""

    def __init__(self, pipe: AVGenPipeline, monkeypatch):
        self.calls, self.forward = [], pipe.transformer.forward
        monkeypatch.setattr(pipe.transformer, "forward", self)

    def __call__(self, video, audio, t_video, t_audio, prompt_ids, prompt_mask, cross_modal=True, **kw):
        self.calls.append(dict(video=video.clone(), audio=audio.clone(), t_video=t_video.clone(),
                               t_audio=t_audio.clone(), mask=prompt_mask.clone(), cross=cross_modal))
        return self.forward(video, audio, t_video, t_audio, prompt_ids, prompt_mask, cross_modal=cross_modal, **kw)


@pytest.mark.parametrize("sampler", ODE_SAMPLERS)
def test_output_shapes_for_every_sampler(sampler):
    pipe = tiny_pipeline(sampler)
    out = pipe(["3 1", "7"], num_inference_steps=3, generator=[seeded(0), seeded(1)])
    assert out.frames.shape == (2, 16, 32, 32, 1) and out.audio.shape == (2, 8000)
    assert out.fps == 16 and out.sample_rate == 8000
    assert isinstance(out.frames, np.ndarray) and 0 <= out.frames.min() and out.frames.max() <= 1
    assert np.isfinite(out.audio).all()


def test_output_types_and_duration(pipe):
    frames, audio = pipe("3", num_inference_steps=2, generator=seeded(), output_type="pt", return_dict=False)
    assert isinstance(frames, torch.Tensor) and frames.shape == (1, 16, 32, 32, 1)
    latents = pipe("3", num_inference_steps=2, generator=seeded(), output_type="latent")
    assert latents.frames.shape == (1, 16, 1024) and latents.audio.shape == (1, 16, 516)
    longer = pipe("3", duration_s=2.0, num_inference_steps=2, generator=seeded())
    assert longer.frames.shape[1] == 32 and longer.audio.shape[1] == 16000


def test_same_seed_same_clip_and_batch_independence(pipe):
    a = pipe("3 1", num_inference_steps=3, generator=seeded(5))
    b = pipe("3 1", num_inference_steps=3, generator=seeded(5))
    c = pipe("3 1", num_inference_steps=3, generator=seeded(6))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert not np.array_equal(a.frames, c.frames)
    both = pipe(["3 1", "3 1"], num_inference_steps=3, generator=[seeded(6), seeded(5)])
    assert np.allclose(both.frames[1], a.frames[0], atol=1e-5)


def test_prompt_stream_is_encoded_once_per_call_not_per_step(pipe, monkeypatch):
    """Work repeated across steps is not redone: the prompt stream's states (cond and uncond rows
    together) are computed once per call and every step's forward reads them; so are the AdaLN
    outputs of every step, in one table, whose rows match what each step's forward would compute."""
    spy = ForwardSpy(pipe, monkeypatch)
    encoded, encode = [], pipe.transformer.encode_prompt_states
    monkeypatch.setattr(pipe.transformer, "encode_prompt_states",
                        lambda ids, mask: encoded.append(tuple(ids.shape)) or encode(ids, mask))
    tables, modulation = [], pipe.transformer.modulation
    monkeypatch.setattr(pipe.transformer, "modulation",
                        lambda tv, ta, mask: tables.append((tv.clone(), ta.clone(), mask.clone())) or modulation(tv, ta, mask))
    pipe(["3 1", "7"], num_inference_steps=4, generator=[seeded(0), seeded(1)])
    assert len(spy.calls) == 4 and encoded == [(4, 3)]  # [cond | uncond] x batch of 2, max_events 3
    assert len(tables) == 1  # one table: 4 steps x [cond | uncond] x batch of 2
    tv, ta, mask = tables[0]
    assert tv.shape == ta.shape == (16,) and mask.shape == (16, 3)
    sigmas = pipe.scheduler.sigmas[:4].float()
    assert torch.allclose(tv, sigmas.repeat_interleave(4)) and torch.equal(ta, tv)  # both noisy: same t
    assert mask[:4].sum(dim=1).tolist() == [2, 1, 0, 0] and torch.equal(mask[4:8], mask[:4])  # cond, uncond


def test_the_execution_device_is_looked_up_once_per_call_not_per_step(pipe, monkeypatch):
    """diffusers' `_execution_device` walks every module of the pipeline on each read (its offload
    hooks): read three times per step, it cost a fifth of the CPU loop. The loop takes the device
    from its tokens instead, so the number of reads does not grow with the steps."""
    reads, prop = [], type(pipe)._execution_device
    monkeypatch.setattr(type(pipe), "_execution_device", property(lambda p: reads.append(1) or prop.fget(p)))

    def count(steps: int) -> int:
        reads.clear()
        pipe("3 1", num_inference_steps=steps, generator=seeded(0), output_type="latent")
        return len(reads)

    assert count(2) == count(6) <= 2


@pytest.mark.parametrize("sampler", ODE_SAMPLERS)
def test_modulation_table_gives_each_step_its_own_rows(sampler, monkeypatch):
    """Sampling with the per-call AdaLN table equals sampling where every forward computes its own
    (the old path), for each sampler, a batch of two prompts with a per-row negative prompt, a
    guidance interval that skips the unconditional pass at some steps, the no-cross pass, and A2V."""
    pipe = tiny_pipeline(sampler)
    cases = [dict(prompt=["3 1", "7"], negative_prompt=["", "2"], guidance_scale=3.0, modality_scale=2.0,
                  guidance_interval=(0.0, 0.5)),
             dict(prompt=["4 2"], audio=np.random.default_rng(0).uniform(-0.3, 0.3, 8000).astype(np.float32))]
    for kw in cases:
        n = len(kw["prompt"])
        run = lambda: pipe(**kw, num_inference_steps=4, output_type="latent",  # noqa: E731
                           generator=[seeded(i) for i in range(n)])
        table = run()
        with monkeypatch.context() as m:
            own = pipe.predict_x0
            m.setattr(pipe, "predict_x0", lambda x, t, prompts, guidance, modulation=None: own(x, t, prompts, guidance))
            direct = run()
        for a, b in ((table.frames, direct.frames), (table.audio, direct.audio)):
            assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) < 1e-4 * max(1.0, float(np.abs(np.asarray(b)).max()))


def test_modulation_table_memory_is_bounded_by_rows_not_steps(monkeypatch):
    """A long, wide call builds its table in chunks of at most TABLE_ROWS rows, not steps x rows at once."""
    from avgen.model import sampler

    pipe = tiny_pipeline()
    sizes, modulation = [], pipe.transformer.modulation
    monkeypatch.setattr(pipe.transformer, "modulation",
                        lambda tv, ta, mask: sizes.append(len(tv)) or modulation(tv, ta, mask))
    monkeypatch.setattr(sampler, "TABLE_ROWS", 8)
    pipe(["3", "4 5"], num_inference_steps=5, generator=[seeded(0), seeded(1)], output_type="latent")
    assert sizes == [8, 8, 4]  # 2 steps x [cond | uncond] x 2 per chunk, then the last step


def test_all_guidance_passes_run_as_one_forward_per_step(pipe, monkeypatch):
    spy = ForwardSpy(pipe, monkeypatch)
    pipe(["3", "4 5"], num_inference_steps=4, guidance_scale=3.0, modality_scale=2.0, guidance_interval=(0.0, 1.0),
         generator=[seeded(0), seeded(1)])
    assert len(spy.calls) == 4
    call = spy.calls[0]
    assert call["video"].shape[0] == 6  # cond, uncond, no-cross-modal for a batch of 2
    assert call["cross"].tolist() == [True] * 4 + [False] * 2
    assert call["mask"][2:4].sum() == 0 and call["mask"][:2].sum() == 3  # uncond rows: null prompt
    spy.calls.clear()
    pipe("3", num_inference_steps=2, guidance_scale=1.0, modality_scale=1.0, generator=seeded())
    assert [c["video"].shape[0] for c in spy.calls] == [1, 1]  # no guidance: a single pass


def test_guidance_combination():
    cond, uncond, nocross = (torch.full((1, 2, 3), v) for v in (1.0, 0.0, 0.5))
    x0 = {"cond": {"video": cond, "audio": cond}, "uncond": {"video": uncond, "audio": uncond},
          "nocross": {"video": nocross, "audio": nocross}}
    out = Guidance(video=3.0, audio=2.0, modality_video=1.0, modality_audio=3.0).combine(x0)
    assert torch.allclose(out["video"], torch.full_like(cond, 3.0))  # 1 + 2 * (1 - 0)
    assert torch.allclose(out["audio"], torch.full_like(cond, 3.0))  # 1 + 1 * 1 + 2 * (1 - 0.5)
    off = Guidance(1.0, 1.0, 1.0, 1.0)
    assert not off.needs_uncond and not off.needs_nocross
    assert torch.equal(off.combine({"cond": x0["cond"]})["video"], cond)


def test_audio_to_video_holds_audio_fixed(pipe, monkeypatch):
    given = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    spy = ForwardSpy(pipe, monkeypatch)
    out = pipe("3", audio=given, num_inference_steps=3, generator=seeded(), modality_scale=2.0)
    assert np.array_equal(out.audio[0], given)  # bit-identical
    clean = pipe.codec.encode_audio(torch.from_numpy(given)[None])
    for call in spy.calls:  # every pass of every step saw the clean audio at t = 0
        assert torch.equal(call["t_audio"], torch.zeros_like(call["t_audio"]))
        assert torch.equal(call["audio"], clean.expand_as(call["audio"]))
        assert (call["t_video"] > 0).all()
    t2av = pipe("3", num_inference_steps=3, generator=seeded())
    assert not np.array_equal(out.frames, t2av.frames)  # the picture depends on the given sound


def test_video_to_audio_holds_video_fixed(pipe, monkeypatch):
    given = np.random.default_rng(0).random((16, 32, 32, 1)).astype(np.float32)
    spy = ForwardSpy(pipe, monkeypatch)
    out = pipe("3", video=given, num_inference_steps=3, generator=seeded())
    assert np.array_equal(out.frames[0], given)
    assert all(torch.equal(c["t_video"], torch.zeros_like(c["t_video"])) for c in spy.calls)
    assert out.audio.shape == (1, 8000) and np.abs(out.audio).max() > 0


def test_strength_starts_from_the_init_tokens_noised_to_that_level(pipe, monkeypatch):
    rng = np.random.default_rng(0)
    frames = rng.random((16, 32, 32, 1)).astype(np.float32)
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    spy = ForwardSpy(pipe, monkeypatch)
    out = pipe("3", init_video=frames, init_audio=audio, strength=0.3, num_inference_steps=10,
               generator=seeded(), output_type="latent")
    pipe.scheduler.set_timesteps(10)
    kept = [float(s) for s in pipe.scheduler.sigmas if 0 < s <= 0.3]
    assert [float(c["t_audio"][0]) for c in spy.calls] == pytest.approx(kept)  # only the steps below 0.3
    assert all(torch.equal(c["t_video"], c["t_audio"]) for c in spy.calls)
    clean = pipe.codec.encode(torch.from_numpy(frames)[None], torch.from_numpy(audio)[None])
    first, s = spy.calls[0], kept[0]  # the first kept level: the init's own tokens noised to it
    # mixed with the noise a text-to-AV call draws from the same generator (video, then audio)
    gen = seeded()
    nv = torch.randn((1, 16, pipe.codec.dims["video"]), generator=gen)
    na = torch.randn((1, 16, pipe.codec.dims["audio"]), generator=gen)
    torch.testing.assert_close(first["video"][:1], (1 - s) * clean["video"] + s * nv)
    torch.testing.assert_close(first["audio"][:1], (1 - s) * clean["audio"] + s * na)
    assert out[0].shape == clean["video"].shape
    # strength 1: the init is ignored, the call is plain text-to-AV
    a = pipe("3", init_audio=audio, init_video=frames, strength=1.0, num_inference_steps=3, generator=seeded())
    b = pipe("3", num_inference_steps=3, generator=seeded())
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    # below the schedule's last noise level (0.001) no step is left: the init's own tokens come back
    none_left = pipe("3", init_video=frames, init_audio=audio, strength=0.0005, num_inference_steps=10,
                     generator=seeded(), output_type="latent")
    assert torch.equal(none_left[0], clean["video"]) and torch.equal(none_left[1], clean["audio"])


def test_strength_refuses_what_it_cannot_do(pipe):
    audio = np.zeros(8000, np.float32)
    frames = np.zeros((16, 32, 32, 1), np.float32)
    with pytest.raises(ValueError, match="init_video"):  # video would start at 0.5 from pure noise
        pipe("3", init_audio=audio, strength=0.5, num_inference_steps=2)
    with pytest.raises(ValueError, match="give one"):
        pipe("3", audio=audio, init_audio=audio, init_video=frames, strength=0.5, num_inference_steps=2)
    for bad in (0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="strength"):
            pipe("3", init_audio=audio, init_video=frames, strength=bad, num_inference_steps=2)
    with pytest.raises(ValueError, match="euler"):
        tiny_pipeline("heun")("3", init_audio=audio, init_video=frames, strength=0.5, num_inference_steps=2)
    # one modality held clean, the other re-noised: allowed
    out = pipe("3", video=frames, init_audio=audio, strength=0.5, num_inference_steps=4, generator=seeded())
    assert np.array_equal(out.frames[0], frames)


def test_bad_requests_raise(pipe):
    with pytest.raises(ValueError, match="is not one"):
        pipe("3 x", num_inference_steps=1)
    with pytest.raises(ValueError, match="not both"):
        pipe("3", audio=np.zeros(8000), video=np.zeros((16, 32, 32, 1)), num_inference_steps=1)
    with pytest.raises(ValueError, match="tokens"):
        pipe("3", audio=np.zeros(4000, np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match="sampler"):
        pipe.set_sampler("ddim")


def test_callback_sees_and_can_replace_latents(pipe):
    seen = []

    def callback(p, i, t, tensors):
        seen.append((i, tuple(tensors["latents"].shape)))
        return {"audio_latents": torch.zeros_like(tensors["audio_latents"])}

    out = pipe("3", num_inference_steps=2, generator=seeded(), callback_on_step_end=callback, output_type="latent")
    assert seen == [(0, (1, 16, 1024)), (1, (1, 16, 1024))]
    assert torch.equal(out.audio, torch.zeros_like(out.audio))


@pytest.mark.parametrize("sampler", ODE_SAMPLERS)
def test_generate_reports_every_step_in_the_steps_asked_for(pipe, sampler):
    seen = []
    generate(pipe, GenerateSettings(prompt="3", steps=3, sampler=sampler), on_step=lambda i, n: seen.append((i, n)))
    assert seen[-1] == (3, 3) and all(n == 3 for _, n in seen)
    assert [i for i, _ in seen] == sorted(i for i, _ in seen) and seen[0][0] >= 1
    assert len(seen) == pipe.num_timesteps  # one report per scheduler step (Heun has more than 3)


def gaussian_flow(pipe, sd: float, shrink_below: float = 0.0):
    """`pipe` with its network replaced by the exact x0 predictor of N(0, sd^2) data under x_t = (1 - t) x0 +
    t noise, optionally turned into one that scales its input by 0.9 at t <= `shrink_below` (as a trained
    network changes nearly clean input). The ODE from x(1) then ends at sd * x(1)."""
    def predict_x0(x, t, prompts, guidance, modulation=None):
        out = {}
        for m in x:
            tt = t[m][:, None, None]
            out[m] = torch.where(tt <= shrink_below, 0.9 * x[m], (1 - tt) * sd ** 2 / ((1 - tt) ** 2 * sd ** 2 + tt ** 2) * x[m])
        return out
    pipe.predict_x0 = predict_x0
    return pipe


def flow_end(sampler: str, steps: int, sd: float = 0.5, shrink_below: float = 0.0):
    """Both modalities' sampled tokens / (sd * their start noise), flattened: 1 everywhere for an exact solver."""
    pipe = gaussian_flow(tiny_pipeline(sampler), sd, shrink_below)
    noise = torch.randn(1, 16, 1024, generator=seeded(0))
    audio = torch.randn(1, 16, pipe.transformer.config.audio_dim, generator=seeded(1))
    out = pipe("3", num_inference_steps=steps, latents=noise.clone(), audio_latents=audio.clone(), output_type="latent")
    return torch.cat([(out.frames / (sd * noise)).flatten(), (out.audio / (sd * audio)).flatten()])


def test_heun_is_second_order_on_an_exact_flow():
    errors = {(s, n): float((flow_end(s, n) - 1).abs().max()) for s in ("euler", "heun") for n in (20, 40)}
    assert errors["heun", 20] < errors["euler", 20] / 5  # measured: 0.0047 against 0.075
    assert errors["heun", 40] < errors["heun", 20] / 3  # error ~ 1 / steps^2 (measured 4.4x), Euler's ~ 1 / steps
    assert errors["euler", 40] > errors["euler", 20] / 2.5


def test_heun_does_not_amplify_what_the_network_does_near_clean():
    """A network that scales nearly clean input by 0.9 (at t = 1/1000) should cost 10%, not the clip: diffusers'
    Heun corrected the interval ending there with the velocity (x - x0) / 0.001, and ended at -0.98x the
    solution at 25 steps, -8.9x at 5 (the shipped weights' clips lost their digits that way)."""
    ratio = flow_end("heun", 25, shrink_below=1.1e-3)
    assert abs(float(ratio.median()) - 0.9) < 0.01 and float((ratio - 0.9).abs().max()) < 0.02  # measured 0.8965, 0.0035


def test_heun_plan_evaluates_2n_minus_2_times():
    pipe = tiny_pipeline("heun")
    sched = pipe.scheduler
    sched.set_timesteps(3)
    assert [kind for kind, _, _ in sched._plan] == ["predict", "correct", "euler", "euler"]
    assert sched.sigmas[[0, 1, 2, 3, 4]].tolist() == pytest.approx([1.0, 0.5005, 0.5005, 0.001, 0.0], abs=1e-4)
    assert len(sched.timesteps) == 4
    sched.set_timesteps(1)
    assert [kind for kind, _, _ in sched._plan] == ["euler"] and sched.sigmas.tolist() == [1.0, 0.0]


def test_a_heun_pipeline_saves_and_loads(tmp_path):
    pipe = tiny_pipeline("heun")
    pipe.save_pretrained(tmp_path)
    loaded = AVGenPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is type(pipe.scheduler) and type(loaded.audio_scheduler) is type(pipe.scheduler)
    a = pipe("3 1", num_inference_steps=3, generator=seeded(3), output_type="latent")
    b = loaded("3 1", num_inference_steps=3, generator=seeded(3), output_type="latent")
    assert torch.equal(a.frames, b.frames) and torch.equal(a.audio, b.audio)


def test_save_load_gives_the_same_clip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = AVGenPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    sa, sb = pipe.transformer.state_dict(), loaded.transformer.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    a = pipe("3 1", num_inference_steps=2, generator=seeded(3))
    b = loaded("3 1", num_inference_steps=2, generator=seeded(3))
    # equal weights; the BLAS may take another kernel path for differently aligned copies (~1e-7 apart)
    assert np.allclose(a.frames, b.frames, atol=1e-5) and np.allclose(a.audio, b.audio, atol=1e-5)
    assert load_pipeline(tmp_path, device="cpu").codec.spec == SPEC


def test_generate_writes_mp4_and_sidecar(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "w")
    settings = GenerateSettings(prompt="3 1", seed=4, steps=2, num_clips=2)
    clips = generate(pipe, settings)
    assert [c.meta["seed"] for c in clips] == [4, 5] and clips[0].frames.shape == (16, 32, 32, 1)
    paths = write_outputs(clips, tmp_path / "out" / "clip.mp4", settings, pipe, tmp_path / "w", "cpu")
    assert [p.name for p in paths] == ["clip_000.mp4", "clip_001.mp4"] and all(p.stat().st_size > 0 for p in paths)
    meta = json.loads(paths[1].with_suffix(".json").read_text())
    assert meta["seed"] == 5 and meta["prompt"] == "3 1" and meta["settings"]["steps"] == 2
    assert len(meta["weights"]["sha256"]) == 64 and "torch" in meta["versions"]


def test_cli_generate(pipe, tmp_path, capsys):
    from avgen.cli import main
    pipe.save_pretrained(tmp_path / "w")
    out = tmp_path / "clip.mp4"
    assert main(["generate", "3 1", "--out", str(out), "--weights", str(tmp_path / "w"), "--steps", "2",
                 "--device", "cpu"]) == 0
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["settings"]["sampler"] == "euler"
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["timeline"] is True
    assert main(["generate", "3 1", "--out", str(out), "--force", "--weights", str(tmp_path / "w"), "--steps", "1",
                 "--device", "cpu", "--no-timeline"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["timeline"] is False
    assert main(["generate", "3", "--out", str(out), "--force", "--weights", str(tmp_path / "missing")]) == 2
    assert "no model weights" in capsys.readouterr().err
    assert main(["generate", "3 x", "--out", str(out), "--force", "--weights", str(tmp_path / "w")]) == 2
    assert "'x' is not one" in capsys.readouterr().err


def test_cli_generate_from_a_video_keeps_its_picture_and_makes_a_sound(tiny_weights, tmp_path, capsys):
    """`avgen generate --video CLIP.mp4` (V2A): the mp4 written shows the given picture unchanged (to one
    grey level after two H.264 passes) with a new sound of the clip's length; the sidecar says v2a."""
    from avgen.cli import main
    from avgen.data import make_dataset
    from avgen.data.given import read_given
    from avgen.data.io import decode_av, write_mp4
    from tests.demo_helpers import SPEC as CLIP

    clip = make_dataset("shapes", split="test", spec=CLIP)[2]
    given = write_mp4(clip, tmp_path / "given.mp4")
    held, _ = read_given(given, CLIP, "video")
    out = tmp_path / "out" / "v2a.mp4"
    assert main(["generate", "", "--video", str(given), "--weights", str(tiny_weights), "--out", str(out),
                 "--steps", "2", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    d = decode_av(out)
    assert d.frames.shape == (CLIP.num_frames, 8 * CLIP.height, 8 * CLIP.width, 3) and d.fps == CLIP.fps
    assert len(d.audio) == len(decode_av(given).audio)  # as long as a 3-s clip's sound through the same writer
    assert abs(len(d.audio) / d.sample_rate - CLIP.duration) < 0.15
    back, notes = read_given(out, CLIP, "video")
    assert notes == [] and np.abs(back - held).max() <= 1.5 / 255
    sound = d.audio.reshape(-1)[: CLIP.num_samples]
    assert np.abs(sound).max() > 0.01 and abs(np.corrcoef(sound, clip.audio)[0, 1]) < 0.5  # new, not the file's
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["mode"] == "v2a" and meta["prompt"] == ""
    assert (meta["num_frames"], meta["fps"], meta["sample_rate"]) == (CLIP.num_frames, CLIP.fps, CLIP.sample_rate)


def test_guidance_acts_only_inside_its_noise_interval(pipe, monkeypatch):
    spy = ForwardSpy(pipe, monkeypatch)
    pipe("3 1", num_inference_steps=6, guidance_scale=4.0, guidance_interval=(0.0, 0.5), generator=seeded())
    sizes = [(float(c["t_video"][0]), c["video"].shape[0]) for c in spy.calls]
    assert all(n == (2 if t <= 0.5 else 1) for t, n in sizes) and {n for _, n in sizes} == {1, 2}
    default = pipe("3 1", num_inference_steps=6, guidance_scale=4.0, generator=seeded())
    assert np.array_equal(default.frames, pipe("3 1", num_inference_steps=6, guidance_scale=4.0, generator=seeded(),
                                               guidance_interval=DEFAULT_GUIDANCE_INTERVAL).frames)
    assert GenerateSettings().check().guidance_interval == DEFAULT_GUIDANCE_INTERVAL
    spy.calls.clear()  # from text, by default: unguided at the first (high-noise) steps and at the last ones
    pipe("3 1", num_inference_steps=25, guidance_scale=4.0, generator=seeded())
    lo, hi = DEFAULT_GUIDANCE_INTERVAL
    sizes = [(float(c["t_video"][0]), c["video"].shape[0]) for c in spy.calls]
    assert all(n == (2 if lo <= t <= hi else 1) for t, n in sizes)
    assert lo > 0 and sizes[-1][1] == 1 and sizes[0][1] == 1 and 2 in {n for _, n in sizes}
    assert GenerateSettings(mode="a2v").check().guidance_interval == (0.0, 1.0)
    assert GenerateSettings(mode="a2v", guidance_interval=(0.1, 0.5)).check().guidance_interval == (0.1, 0.5)
    spy.calls.clear()
    full = pipe("3 1", num_inference_steps=6, guidance_scale=4.0, guidance_interval=(0.0, 1.0), generator=seeded())
    assert all(c["video"].shape[0] == 2 for c in spy.calls) and not np.array_equal(full.frames, default.frames)
    g = Guidance(3.0, 2.0, 1.0, 1.0, interval=(0.2, 0.6))
    assert g.at({"video": 0.4, "audio": 0.9}) == Guidance(3.0, 1.0, 1.0, 1.0, interval=(0.2, 0.6))
    assert not g.at({"video": 0.1, "audio": 0.0}).needs_uncond  # t = 0: a held-clean modality is never guided
    with pytest.raises(ValueError, match="0 <= lo <= hi <= 1"):
        pipe("3", guidance_interval=(0.7, 0.2), num_inference_steps=1)
    spy.calls.clear()  # audio given (A2V): its layout is given, guidance acts at every level by default
    pipe("3 1", audio=np.zeros(8000, np.float32), num_inference_steps=4, guidance_scale=4.0, generator=seeded())
    assert [c["video"].shape[0] for c in spy.calls] == [2, 2, 2, 2]


@pytest.mark.parametrize("bad", [dict(guidance_interval=(0.5, 1.5)), dict(guidance_interval="0.5"),
                                 dict(guidance_scale=float("nan")), dict(modality_scale=float("inf")),
                                 dict(steps="10"), dict(steps=0), dict(seed=-1), dict(num_clips=True),
                                 dict(sampler="ddim"), dict(mode="x2y"), dict(duration=float("nan")),
                                 dict(prompt=3)])
def test_generate_refuses_settings_no_clip_can_come_from_with_one_line(pipe, bad):
    with pytest.raises(ValueError) as e:
        generate(pipe, GenerateSettings(**{"prompt": "3", **bad}))
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_the_pipeline_call_checks_its_scales_and_steps(pipe):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        pipe("3", guidance_scale=float("nan"), num_inference_steps=1)
    with pytest.raises(ValueError, match="whole number"):
        pipe("3", num_inference_steps=2.5)
    with pytest.raises(ValueError, match="the prompt must be text"):
        pipe([3], num_inference_steps=1)
    with pytest.raises(ValueError, match="the prompt has 500 labels; at most 3 fit") as e:  # not the prompt itself
        pipe(" ".join(["3"] * 500), num_inference_steps=1)
    assert len(str(e.value)) < 100


def test_load_pipeline_refuses_weights_that_do_not_fit_naming_the_file(pipe, tmp_path):
    from safetensors.torch import load_file, save_file

    from avgen.model.weights import weights_file

    pipe.save_pretrained(tmp_path)
    path = weights_file(tmp_path)
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != name}, str(path))
    with pytest.raises(ValueError, match=f"{path.name}.*missing"):
        load_pipeline(tmp_path, device="cpu")
    path.write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_pipeline(tmp_path, device="cpu")
