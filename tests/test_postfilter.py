"""The spectral-detail postfilter: its formula, the fit, its files, and how the pipeline, the CLI and the
sidecar use it."""
import json

import numpy as np
import pytest
import torch

from avgen.cli import main
from avgen.api.generate import GenerateSettings, generate
from avgen.api.records import write_outputs
from avgen.model.pipeline import load_pipeline
from avgen.model.postfilter import (FOLDER, PostfilterConfig, PostfilterError, SpectralPostfilter, detail_variance,
                                    envelope, fit_gains)
from tests.test_pipeline import seeded, tiny_pipeline

BINS = 129  # the tiny pipeline's codec: n_fft 256


def written_out(x: torch.Tensor, gains: torch.Tensor, width: int) -> torch.Tensor:
    """The filter of one (T, F) clip by loops: the mean over the bins in reach (fewer at the edges)."""
    out = torch.empty_like(x)
    for t in range(x.shape[0]):
        for f in range(x.shape[1]):
            lo, hi = max(0, f - width // 2), min(x.shape[1], f + width // 2 + 1)
            s = x[t, lo:hi].mean()
            out[t, f] = s + gains[f] * (x[t, f] - s)
    return out


def test_the_filter_is_its_formula_and_the_identity_at_gain_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 11, generator=g, dtype=torch.float64)
    gains = torch.rand(11, generator=g, dtype=torch.float64) * 3 + 0.5
    post = SpectralPostfilter(gains, PostfilterConfig(width=5))
    y = post(x.float()).double()
    for b in range(2):
        assert torch.allclose(y[b], written_out(x[b], post.gains.double(), 5), atol=1e-5)
    assert torch.allclose(SpectralPostfilter(torch.ones(11))(x.float()), x.float(), atol=1e-6)
    # the strength scales the gains' excess over 1: 0 is off, 2 doubles it
    off = SpectralPostfilter(gains, PostfilterConfig(width=5, strength=0.0))
    assert torch.allclose(off(x.float()), x.float(), atol=1e-6)
    double = SpectralPostfilter(gains, PostfilterConfig(width=5, strength=2.0))
    assert torch.allclose(double(x.float()[:1]).double()[0],
                          written_out(x[0], 1 + 2 * (post.gains.double() - 1), 5), atol=1e-5)
    assert torch.equal(post.with_strength(2.0).applied, double.applied) and post.with_strength(2.0).cfg.strength == 2
    # a strength that would turn a gain below 1 negative is refused
    with pytest.raises(PostfilterError, match="applies a gain <= 0"):
        SpectralPostfilter(torch.tensor([0.5, 1, 1, 1, 2]), PostfilterConfig(strength=2.0))


def test_the_filter_keeps_a_smooth_spectrum_and_scales_detail():
    ramp = torch.linspace(-1, 1, 40)[None, None].repeat(1, 3, 1)  # no detail around a straight line, inside
    for width in (3, 5):
        post = SpectralPostfilter(torch.full((40,), 3.0), PostfilterConfig(width=width))
        assert torch.allclose(post(ramp)[..., 2:-2], ramp[..., 2:-2], atol=1e-6)
    # the envelope is the 5-bin mean (3 and 4 bins at the edges), or the 3-bin one
    x = torch.arange(8.0)[None, None]
    assert torch.allclose(envelope(x, 5)[0, 0], torch.tensor([1.0, 1.5, 2, 3, 4, 5, 5.5, 6]))
    assert torch.allclose(envelope(x, 3)[0, 0], torch.tensor([0.5, 1, 2, 3, 4, 5, 6, 6.5]))  # (2 bins at the edges)


def test_the_fit_recovers_a_known_loss_of_detail():
    """Real = a flat spectrum per frame plus random detail; generated = the same with half the detail.
    The variance of the detail falls 4x, so every gain must be 2, and filtering the generated clips
    with them gives them back about the real clips' detail variance."""
    g = torch.Generator().manual_seed(1)
    level = torch.randn(8, 30, 1, generator=g).expand(8, 30, 64) * 0.05  # every frame about as loud
    detail = torch.randn(8, 30, 64, generator=g)
    real, generated = level + detail, level + detail / 2
    cfg = PostfilterConfig(active_range=10.0)
    gains, ratio = fit_gains(real, generated, cfg)
    assert torch.allclose(ratio, torch.full((64,), 4.0), rtol=1e-4) and torch.allclose(gains, torch.full((64,), 2.0), rtol=1e-4)
    # measured again after filtering, the detail is back to the real clips' within 20% (not exactly: the
    # envelope of the filtered spectrum holds a little of the scaled detail). For white detail and the
    # 3-bin envelope A the filtered detail is (I - A)(2I - A) e against the real 2 (I - A) e, taps
    # [1, -7, 12, -7, 1] / 9 against [-2, 4, -2] / 3: 244/81 over 24/9 = 1.13 in variance, inside the band
    restored = SpectralPostfilter(gains, cfg)(generated)
    after = detail_variance(restored, cfg) / detail_variance(real, cfg)
    assert ((after - 1).abs() < 0.2).all() and abs(float(after[1:-1].mean()) - 244 / 216) < 0.02
    # and on another loss per band: the fitted gains follow it (smoothed over 9 bins)
    scale = torch.cat([torch.ones(32), torch.full((32,), 0.25)])
    gains, _ = fit_gains(real, level + detail * scale, cfg)
    # (away from the step: the envelope mixes bins 1 either side of it, the smoothing 4 more)
    assert torch.allclose(gains[:24], torch.ones(24), rtol=1e-3) and torch.allclose(gains[40:], torch.full((24,), 4.0), rtol=1e-3)


def test_save_and_load_round_trip_and_refuse_unusable_files(tmp_path):
    gains = torch.linspace(1, 3, BINS)
    post = SpectralPostfilter(gains, PostfilterConfig(fit={"note": "test"}))
    post.save(tmp_path / "p")
    back = SpectralPostfilter.load(tmp_path / "p", bins=BINS)
    assert torch.equal(back.gains, post.gains) and back.cfg == post.cfg
    with pytest.raises(PostfilterError, match="gains.safetensors.*129 gains.*65 bins"):
        SpectralPostfilter.load(tmp_path / "p", bins=65)
    from safetensors.torch import save_file
    save_file({"gains": torch.full((BINS,), float("nan"))}, tmp_path / "p" / "gains.safetensors")
    with pytest.raises(PostfilterError, match="positive finite"):
        SpectralPostfilter.load(tmp_path / "p")
    save_file({"gains": gains, "extra": gains.clone()}, tmp_path / "p" / "gains.safetensors")
    with pytest.raises(PostfilterError, match="one tensor 'gains'"):
        SpectralPostfilter.load(tmp_path / "p")
    (tmp_path / "p" / "gains.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(PostfilterError, match="not a readable safetensors"):
        SpectralPostfilter.load(tmp_path / "p")
    for text, message in [(b'{"strength": -1}', "config.json: postfilter strength must be a number >= 0"),
                          (b'{"fit": null}', "config.json: postfilter fit must be an object"),
                          (b"\xff\xfe{", "config.json: not a readable"),
                          (b'{"width": 4}', "config.json: postfilter width must be an odd"),
                          (b'{"widht": 5}', "config.json: expected an object with keys"),
                          (b"{", "config.json: not a readable")]:
        (tmp_path / "p" / "config.json").write_bytes(text)
        with pytest.raises(PostfilterError, match=message):
            SpectralPostfilter.load(tmp_path / "p")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The tiny pipeline saved, with a postfilter of strong gains stored beside it."""
    folder = tmp_path_factory.mktemp("w")
    tiny_pipeline().save_pretrained(folder)
    SpectralPostfilter(torch.linspace(0.8, 3.0, BINS)).save(folder / FOLDER)
    return folder


def test_the_pipeline_decodes_generated_audio_through_the_stored_postfilter(weights, tmp_path):
    pipe = load_pipeline(weights, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.postfilter is not None and pipe.postfilter.bins == BINS
    on = pipe("3 1", num_inference_steps=2, generator=seeded(0))
    off = pipe("3 1", num_inference_steps=2, generator=seeded(0), postfilter=False)
    assert np.array_equal(on.frames, off.frames) and not np.allclose(on.audio, off.audio, atol=1e-3)
    # what `off` decodes is what weights without a postfilter give, and latents are the model's own tokens
    plain = tiny_pipeline()
    ref = plain("3 1", num_inference_steps=2, generator=seeded(0))
    assert np.allclose(off.audio, ref.audio, atol=1e-5)
    lat = [pipe("3 1", num_inference_steps=2, generator=seeded(0), output_type="latent", postfilter=p).audio
           for p in (True, False)]
    assert torch.equal(lat[0], lat[1])
    tokens = pipe.codec.audio_tokens(pipe.postfilter(pipe.codec.audio_frames(lat[0].float())))
    assert np.allclose(on.audio, pipe.codec.decode_audio(tokens).numpy(), atol=1e-5)
    # a given (A2V) sound is returned untouched
    a2v = pipe("3 1", num_inference_steps=2, generator=seeded(0), audio=on.audio[0])
    assert np.array_equal(a2v.audio[0], on.audio[0])


def test_save_pretrained_and_from_pretrained_carry_the_postfilter(weights, tmp_path):
    from avgen.model.pipeline import AVGenPipeline

    pipe = AVGenPipeline.from_pretrained(weights)
    assert torch.equal(pipe.postfilter.gains, SpectralPostfilter.load(weights / FOLDER).gains)
    pipe.save_pretrained(tmp_path / "copy")
    assert torch.equal(load_pipeline(tmp_path / "copy", device="cpu").postfilter.gains, pipe.postfilter.gains)
    pipe.postfilter = None
    pipe.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / FOLDER).exists() and load_pipeline(tmp_path / "plain", "cpu").postfilter is None


def test_settings_and_sidecar_record_the_postfilter(weights, tmp_path):
    pipe = load_pipeline(weights, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="postfilter must be true or false"):
        GenerateSettings(postfilter="no").check()
    settings = GenerateSettings(prompt="7", steps=2, postfilter=False)
    clips = generate(pipe, settings)
    path = write_outputs(clips, tmp_path / "c.mp4", settings, pipe, weights, "cpu")[0]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["settings"]["postfilter"] is False and meta["weights"]["postfilter"] is None
    on_settings = GenerateSettings(prompt="7", steps=2, postfilter=True)
    on = generate(pipe, on_settings)
    assert not np.allclose(clips[0].audio, on[0].audio, atol=1e-3)
    # the sidecar names the gains and the strength that decoded the audio
    path = write_outputs(on, tmp_path / "on.mp4", on_settings, pipe, weights, "cpu")[0]
    recorded = json.loads(path.with_suffix(".json").read_text())["weights"]["postfilter"]
    assert recorded == pipe.postfilter.describe() and recorded["strength"] == 1.0
    assert pipe.postfilter.with_strength(2.0).describe()["gains_sha256"] == recorded["gains_sha256"]
    assert pipe.postfilter.describe() != SpectralPostfilter(torch.ones(BINS)).describe()


def test_cli_generate_takes_no_postfilter_and_eval_refuses_it_without_generate(weights, tmp_path, capsys):
    out = tmp_path / "c.mp4"
    assert main(["generate", "3", "--out", str(out), "--weights", str(weights), "--steps", "1", "--device", "cpu",
                 "--no-postfilter"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["postfilter"] is False
    assert main(["eval", "--dataset", "talking-digits", "--n", "2", "--no-postfilter"]) == 2
    assert "--no-postfilter applies to --generate" in capsys.readouterr().err


def test_a_postfilter_for_other_weights_is_refused_with_one_line(weights, tmp_path, capsys):
    import shutil
    other = tmp_path / "w"
    shutil.copytree(weights, other)
    SpectralPostfilter(torch.ones(65)).save(other / FOLDER)
    assert main(["generate", "3", "--out", str(tmp_path / "c.mp4"), "--weights", str(other), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "65 gains" in err and "129 bins" in err and "Traceback" not in err


def test_cli_postfilter_fits_shows_and_refuses(weights, tmp_path, data_root, capsys):
    out = tmp_path / "pf"
    args = ["postfilter", "--weights", str(weights), "--out", str(out), "--n", "4", "--batch", "2",
            "--data-root", str(data_root), "--device", "cpu"]
    assert main(args) == 0
    post = SpectralPostfilter.load(out, bins=BINS)
    assert (post.cfg.width, post.cfg.smooth, post.cfg.strength) == (3, 9, 1.0)  # the defaults
    assert torch.isfinite(post.gains).all() and post.cfg.fit["generated_clips"].startswith("4 random train prompts")
    assert set(post.cfg.fit["gains"]) == {"0-500", "500-1000", "1000-2000", "2000-4000"}
    capsys.readouterr()
    assert main(args) == 2 and "exists; pass --force" in capsys.readouterr().err
    assert main(["postfilter", "--out", str(out), "--show"]) == 0
    assert json.loads(capsys.readouterr().out)["bins"] == BINS
    assert main(["postfilter", "--out", str(out), "--set-strength", "0.5"]) == 0
    again = SpectralPostfilter.load(out)
    assert again.cfg.strength == 0.5 and torch.equal(again.gains, post.gains) and again.cfg.fit == post.cfg.fit
    assert main(["postfilter", "--out", str(out), "--set-strength", "-1"]) == 2
    assert main(["postfilter", "--out", str(out), "--set-strength", "1", "--show"]) == 2
    assert main(["postfilter", "--out", str(tmp_path / "none"), "--show"]) == 2
    # a refit replaces a postfilter that no longer loads (it is not read on the way)
    (weights_copy := tmp_path / "w").mkdir()
    for f in weights.iterdir():
        if f.name != FOLDER:
            (weights_copy / f.name).symlink_to(f)
    (weights_copy / FOLDER).mkdir()
    (weights_copy / FOLDER / "config.json").write_text("{")
    assert main(["generate", "3", "--out", str(tmp_path / "c.mp4"), "--weights", str(weights_copy)]) == 2
    assert main(["postfilter", "--weights", str(weights_copy), "--force", "--n", "2", "--batch", "2",
                 "--data-root", str(data_root), "--device", "cpu", "--width", "5", "--smooth", "5"]) == 0
    refit = SpectralPostfilter.load(weights_copy / FOLDER, bins=BINS)
    assert refit.cfg.fit["generated_clips"].startswith("2 random") and (refit.cfg.width, refit.cfg.smooth) == (5, 5)
    capsys.readouterr()
    assert main(["postfilter", "--show", "--weights", str(weights_copy)]) == 0
    assert json.loads(capsys.readouterr().out)["width"] == 5
    assert main(["postfilter", "--set-strength", "1", "--weights", str(weights_copy)]) == 0  # keeps the width
    assert SpectralPostfilter.load(weights_copy / FOLDER).cfg.width == 5
    for bad in (["--width", "4"], ["--width", "0"], ["--smooth", "65"], ["--smooth", "x"]):
        assert main(["postfilter", "--weights", str(weights), "--out", str(tmp_path / "y"), *bad]) == 2
        assert "--" + bad[0][2:] in capsys.readouterr().err
    # a strength these gains cannot take (the tiny model's go below 1) is refused after the fit, which is kept
    assert main(["postfilter", "--weights", str(weights), "--out", str(tmp_path / "s"), "--n", "2", "--batch", "2",
                 "--data-root", str(data_root), "--device", "cpu", "--strength", "9"]) == 2
    assert "applies a gain <= 0" in (err := capsys.readouterr().err) and "stored at strength 1" in err
    assert SpectralPostfilter.load(tmp_path / "s", bins=BINS).cfg.strength == 1.0
    assert main(["postfilter", "--weights", str(weights), "--out", str(tmp_path / "x"), "--seed",
                 str(2 ** 63 - 2), "--n", "4"]) == 2
    assert "leaves no room" in capsys.readouterr().err


def test_the_shipped_weights_carry_a_postfilter_fitted_for_them():
    from avgen.model.weights import DEFAULT_WEIGHTS

    post = SpectralPostfilter.load(DEFAULT_WEIGHTS / FOLDER, bins=BINS)
    fit = post.cfg.fit
    assert fit["generated_clips"].startswith("160 random train prompts (rng seed 1000)")
    # detail is missing more the higher the band, and the gains follow
    ratios = list(fit["variance_ratio_real_over_generated"].values())
    assert ratios == sorted(ratios) and ratios[-1] > 4 and 0.9 < float(post.gains[:8].mean()) < 1.2
    # the 3-bin envelope and strength 2.5 were chosen on held-out clips (seeds 2000-2099 and 3000-3099)
    assert (post.cfg.width, post.cfg.strength) == (3, 2.5)


def test_the_studio_follows_its_postfilter_checkbox(weights, tmp_path, monkeypatch):
    from avgen.demo.app import GENERATE_INPUTS, make_handler
    from avgen.demo.studio import Studio

    studio = Studio(weights, "cpu", tmp_path / "studio", judges=tmp_path / "no-judges")
    on, off = (studio.make(GenerateSettings(prompt="3 1", steps=2, postfilter=p, device="cpu")) for p in (True, False))
    assert not np.allclose(on.clip.audio, off.clip.audio, atol=1e-3)
    # the page's checkbox is the handler's input before the edit spans, and reaches the settings
    seen = []
    monkeypatch.setattr(studio, "make", lambda settings, upload, progress, keep=None: seen.append(settings) or on)
    assert GENERATE_INPUTS[-2:] == ("postfilter", "keep")  # the checkbox, then the edit mode's spans
    for flag in (False, True):
        list(make_handler(studio)("t2av", "3 1", 0, 2, 4.0, 4.0, 1.0, "euler", "cpu", None, None, 0.0, 1.0, flag,
                                  progress=lambda *a, **k: None))
    assert [s.postfilter for s in seen] == [False, True]
