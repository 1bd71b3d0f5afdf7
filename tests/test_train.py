"""Training: config and overrides, schedule, per-sample randomness, EMA, NaN steps, resume,
run folders, samples, export and fine-tuning, and the `avgen train` / `avgen export` CLI."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from avgen.cli import main as cli
from avgen.data import ClipSpec, make_dataset
from avgen.model.pipeline import AVGenPipeline
from avgen.api import training as api_training
from avgen.model import objective, transformer
from avgen.train import data as tdata, loop, record, state, surgery
from avgen.train.checkpoint import checkpoint_path, latest_checkpoint, load_ema_weights, read_checkpoint
from avgen.train.config import TRAIN_PRESETS, TrainConfig, lr_factor, preset
from avgen.train.export import export_run, model_from_checkpoint
from avgen.model.batch import sample_generator
from avgen.train.data import SampleOrder, local_indices
from avgen.train.loop import train
from avgen.train.runtime import Runtime
from avgen.train.state import EMA

CPU = Runtime(torch.device("cpu"))


def tiny(**overrides) -> TrainConfig:
    return preset("tiny", overrides)


def weights(run_dir, step: int, prefix: str = "model.") -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(checkpoint_path(run_dir, step))
    return {k: v for k, v in tensors.items() if k.startswith(prefix)}


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------- config
def test_presets_are_valid_and_round_trip_through_json():
    for name, cfg in TRAIN_PRESETS.items():
        assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg, name
    assert preset("digits-cpu").dataset == "talking-digits"


def test_overrides_are_typed_nested_and_checked():
    cfg = tiny().override(["lr=2e-3", "steps=1e3", "bf16=false", "objective.p_drop_prompt=0.2",
                           "model.depth=3", "spec.duration=2", "codec=mel64"])
    assert (cfg.lr, cfg.steps, cfg.bf16) == (2e-3, 1000, False)
    assert cfg.objective.p_drop_prompt == 0.2 and cfg.model.depth == 3 and cfg.spec.duration == 2.0
    assert cfg.codec.n_mels == 64
    assert tiny().override(["model=AVDiT-S"]).model.hidden_size == 256
    bad = {"nope=1": "unknown option 'nope'", "model.nope=1": "unknown option 'model.nope'",
           "steps=2.5": "not a valid int", "bf16=maybe": "not a valid bool", "model=AVDiT-XL": "preset name",
           "lr": "key=value", "lr_schedule=linear": "lr_schedule", "batch_size=0": "positive",
           "lr.x=1": "no sub-options"}
    for text, message in bad.items():
        with pytest.raises(ValueError, match=message):
            tiny().override([text])
    with pytest.raises(ValueError, match="unknown training preset"):
        preset("huge")
    with pytest.raises(ValueError, match="another avgen version"):
        TrainConfig.from_dict({**tiny().to_dict(), "retired_option": 1})


def test_lr_schedule_warms_up_then_decays_or_stays():
    cfg = tiny(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # cosine: monotone down
    assert lr_factor(100, cfg) == pytest.approx(0.1) and lr_factor(10_000, cfg) == pytest.approx(0.1)
    flat = cfg.override(["lr_schedule=constant"])
    assert [lr_factor(s, flat) for s in (10, 50, 10_000)] == [1.0, 1.0, 1.0]
    wsd = cfg.override(["lr_schedule=wsd", "decay_steps=20"])  # flat to step 80, then down to 0.1 at 100
    assert [lr_factor(s, wsd) for s in (10, 50, 79)] == [1.0, 1.0, 1.0]
    assert lr_factor(89, wsd) == pytest.approx(1 - 0.9 * 10 / 20) and lr_factor(99, wsd) == pytest.approx(0.1)
    assert lr_factor(10_000, wsd) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="decay_steps"):
        cfg.override(["lr_schedule=wsd"]).check()  # a cooldown of no steps


# ---------------------------------------------------------------------------- data and randomness
def test_ranks_split_each_global_batch_into_contiguous_equal_slices():
    slices = [list(local_indices(96, 8, Runtime(CPU.device, rank, 4))) for rank in range(4)]
    assert sum(slices, []) == list(range(96, 104))
    assert list(local_indices(96, 8, CPU)) == list(range(96, 104))


def test_per_sample_generators_depend_on_seed_and_index_only():
    def draw(seed, index):
        return torch.randn(5, generator=sample_generator(seed, index))

    assert torch.equal(draw(0, 17), draw(0, 17))
    assert not torch.equal(draw(0, 17), draw(0, 18))
    assert not torch.equal(draw(0, 17), draw(1, 17))


def test_sample_order_visits_a_folder_dataset_in_a_fresh_permutation_each_epoch():
    order = SampleOrder(10, seed=3, shuffle=True)
    epochs = [[order(g) for g in range(e * 10, (e + 1) * 10)] for e in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != list(range(10))
    assert [SampleOrder(10, 3, shuffle=True)(g) for g in range(10)] == epochs[0]  # a pure function of g
    assert [SampleOrder(10, 3, shuffle=False)(g) for g in (0, 9, 10, 23)] == [0, 9, 0, 3]


def test_ema_follows_the_weights_with_a_ramped_decay():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, decay=0.99)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, step=0)  # decay min(0.99, 1/10): mostly the new weights
    assert torch.allclose(ema.state_dict()["weight"], start["weight"] + 0.9)
    assert ema.decay_at(10_000) == 0.99
    copy = ema.copy_to(torch.nn.Linear(2, 1))
    assert torch.equal(copy.weight, ema.state_dict()["weight"])


# ---------------------------------------------------------------------------- the loop
def test_training_writes_config_metrics_and_checkpoints(tmp_path):
    cfg = tiny(steps=4)
    result = train(cfg, tmp_path / "run", device="cpu", progress_bar=False)
    run = tmp_path / "run"
    assert (result.step, result.skipped_steps) == (4, 0)
    assert record.read_run_config(run) == cfg
    assert result.checkpoint == checkpoint_path(run, 4) == latest_checkpoint(run)
    assert read_checkpoint(result.checkpoint)[1]["train_config"] == cfg.to_dict()
    logged = metrics(run)
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss"]) and m["clips_per_s"] > 0 and {"loss_video", "loss_audio", "lr"} <= m.keys()
               and 0 <= m["input_wait_frac"] <= 1 for m in logged)
    assert logged[1]["samples_seen"] == 2 * cfg.batch_size
    # the EMA is a different tensor set from the raw weights, and it moved away from the initial weights
    assert not all(torch.equal(a, b) for a, b in zip(weights(run, 4).values(), weights(run, 4, "ema.").values()))


def test_a_run_folder_is_not_overwritten_and_resume_needs_one(tmp_path):
    train(tiny(steps=1), tmp_path / "run", device="cpu", progress_bar=False)
    with pytest.raises(ValueError, match="--resume"):
        train(tiny(steps=1), tmp_path / "run", device="cpu", progress_bar=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(tiny(steps=1), tmp_path / "missing", resume=True, device="cpu", progress_bar=False)


def test_metrics_log_drops_steps_after_the_resumed_checkpoint_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "samples": "x"}\n{"step": 3}\n{"st')  # killed mid-write
    log = record.MetricsLog(path, resume_step=2, enabled=True)
    log.write({"step": 3, "loss": 1.0})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1}, {"step": 2, "samples": "x"}, {"step": 3, "loss": 1.0}]


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = tiny(steps=6, ckpt_every=2)
    train(cfg, tmp_path / "straight", device="cpu", progress_bar=False)

    real_save = state.save_training_state

    def crash_after_step_4(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if kwargs["progress"]["step"] == 4:
            raise Interrupted
        return path

    monkeypatch.setattr(state, "save_training_state", crash_after_step_4)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "crashed", device="cpu", progress_bar=False)
    monkeypatch.undo()
    result = train(record.read_run_config(tmp_path / "crashed"), tmp_path / "crashed", resume=True, device="cpu",
                   progress_bar=False)
    assert result.step == 6
    for prefix in ("model.", "ema.", "optimizer."):
        a, b = weights(tmp_path / "straight", 6, prefix), weights(tmp_path / "crashed", 6, prefix)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), prefix
    assert [m["step"] for m in metrics(tmp_path / "crashed")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_data_workers_train_on_exactly_what_one_process_does(tmp_path):
    cfg = tiny(steps=3, ckpt_every=3)
    train(cfg, tmp_path / "inline", device="cpu", progress_bar=False)
    train(cfg, tmp_path / "workers", device="cpu", progress_bar=False, workers=2)
    for prefix in ("model.", "ema.", "optimizer."):
        a, b = weights(tmp_path / "inline", 3, prefix), weights(tmp_path / "workers", 3, prefix)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), prefix
    assert json.loads((tmp_path / "workers" / "run.json").read_text())["workers"] == 2


def test_frames_travel_as_uint8_exactly_when_they_are_levels_of_255(data_root):
    ds = tdata.build_dataset(preset("digits-cpu", {"augment_shift_px": 2}), data_root)
    frames = np.stack([ds[i].frames for i in range(3)])
    packed = tdata.pack_frames(frames)
    assert packed.dtype == torch.uint8 and packed.numel() == frames.size
    assert torch.equal(tdata.unpack_frames(packed), torch.from_numpy(frames))  # bit for bit
    for other in (frames * 0.999, frames.astype(np.float64), frames - 1 / 255):  # off the levels, or not float32
        kept = tdata.pack_frames(other)
        assert kept.dtype != torch.uint8 and np.array_equal(tdata.unpack_frames(kept).numpy(), other)
    assert tdata.pack_frames(np.zeros((0, 2), np.float32)).dtype == torch.uint8  # an empty batch packs too


@pytest.mark.slow
def test_noise_on_device_replays_over_workers_resumes_and_process_counts(tmp_path):
    cfg = tiny(steps=4, ckpt_every=2, noise_on_device=True, lr_schedule="constant")
    train(cfg, tmp_path / "inline", device="cpu", progress_bar=False)
    train(cfg, tmp_path / "workers", device="cpu", progress_bar=False, workers=2)
    train(dataclasses.replace(cfg, steps=2), tmp_path / "resumed", device="cpu", progress_bar=False)
    train(cfg, tmp_path / "resumed", resume=True, device="cpu", progress_bar=False)
    train(dataclasses.replace(cfg, noise_on_device=False), tmp_path / "per_sample", device="cpu", progress_bar=False)
    for prefix in ("model.", "ema.", "optimizer."):
        a = weights(tmp_path / "inline", 4, prefix)
        for other in ("workers", "resumed"):
            b = weights(tmp_path / other, 4, prefix)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (other, prefix)
    per_sample = weights(tmp_path / "per_sample", 4)
    assert not all(torch.equal(v, per_sample[k]) for k, v in weights(tmp_path / "inline", 4).items())
    # the noise is keyed by the global batch: two ranks' slices are one process's batch
    shapes = {"video": (6, 3), "audio": (6, 2)}
    whole = tdata.device_noise(0, range(8, 12), CPU, shapes)
    halves = [tdata.device_noise(0, range(8 + 2 * r, 10 + 2 * r), Runtime(torch.device("cpu"), r, 2), shapes)
              for r in (0, 1)]
    assert all(torch.equal(whole[m], torch.cat([h[m] for h in halves])) for m in shapes)
    assert whole["video"].shape == (4, 6, 3) and whole["audio"].shape == (4, 6, 2)
    for other in (tdata.device_noise(0, range(12, 16), CPU, shapes), tdata.device_noise(1, range(8, 12), CPU, shapes)):
        assert not torch.equal(whole["video"], other["video"])  # another batch, or another run seed


@pytest.mark.slow
def test_a_compiled_step_trains_what_the_eager_step_trains(tmp_path, monkeypatch):
    cfg = tiny(steps=2, ckpt_every=2)
    eager = train(cfg, tmp_path / "eager", device="cpu", progress_bar=False)
    compiled_modules, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled_modules.append(module) or real_compile(module, **kw))
    fused = train(cfg, tmp_path / "compiled", device="cpu", progress_bar=False, compiled=True)
    assert len(compiled_modules) == 1 and isinstance(compiled_modules[0], transformer.AVDiT)  # the step's network
    assert json.loads((tmp_path / "compiled" / "run.json").read_text())["compiled"] is True
    assert fused.last_loss == pytest.approx(eager.last_loss, rel=1e-4)
    a, b = weights(tmp_path / "eager", 2, ""), weights(tmp_path / "compiled", 2, "")
    assert a.keys() == b.keys()  # plain names in the checkpoint (no compile wrapper), so either loads the other
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-5) for k in a)


def test_batches_from_any_position_match_load_batch_and_the_generators_draws(tmp_path):
    cfg = tiny()
    ds = tdata.build_dataset(cfg)
    order = SampleOrder(len(ds), cfg.data_seed, shuffle=False)
    model = surgery.build_model(cfg, ds)
    trainer = state.Trainer.create(cfg, model, CPU)
    spec = trainer.draw_spec()
    stream = tdata.batches(ds, order, 8, cfg, CPU, spec, workers=0)
    for k in range(2):  # batch k of a stream from position 8 = the clips at 8 + 4k ..
        got = next(stream)
        plain = tdata.load_batch(ds, order, range(8 + 4 * k, 12 + 4 * k), cfg.seed, CPU.device, 1)
        assert torch.equal(got.frames, plain.frames) and torch.equal(got.audio, plain.audio)
        assert got.labels == plain.labels and torch.equal(got.slots, plain.slots) and got.generators == []
        assert got.indices == range(8 + 4 * k, 12 + 4 * k)  # (shapes frames are not levels of 255: float)
        n = plain.frames.shape[1]
        again = objective.draw_randomness(plain.generators, 4, {m: (n, trainer.codec.dims[m]) for m in ("video", "audio")},
                                     cfg.objective, timeline=spec.timeline)  # .. with its generators' draws
        for field in ("keep_prompt", "cross_modal", "keep_timeline"):
            a, b = getattr(got.draws, field), getattr(again, field)
            assert (a is None and b is None) or torch.equal(a, b), field
        assert all(torch.equal(got.draws.t[m], again.t[m]) and torch.equal(got.draws.noise[m], again.noise[m])
                   for m in ("video", "audio"))
    halved = got.draws.map(lambda x: x.double() / 2)  # what .to() and .pin_memory() apply, to every tensor
    assert halved.noise["audio"].dtype == torch.float64 and torch.equal(halved.noise["audio"] * 2,
                                                                         got.draws.noise["audio"].double())
    assert halved.keep_timeline is None or halved.keep_timeline.dtype == torch.float64
    stream.close()


@pytest.mark.slow
def test_a_time_limit_stops_with_a_checkpoint_and_resume_matches_a_straight_run(tmp_path, monkeypatch):
    cfg = tiny(steps=5, ckpt_every=5, log_every=5)
    train(cfg, tmp_path / "straight", device="cpu", progress_bar=False)
    clock = iter(range(0, 1000, 10))  # at the start 0 s, after step s 10 s: the limit of 25 s passes at step 3
    monkeypatch.setattr(loop, "_now", lambda: float(next(clock)))
    stopped = train(cfg, tmp_path / "boxed", device="cpu", progress_bar=False, max_seconds=25)
    monkeypatch.undo()
    assert stopped.step == 3 and stopped.checkpoint == checkpoint_path(tmp_path / "boxed", 3)
    assert [m["step"] for m in metrics(tmp_path / "boxed")] == [3]  # the stopping step is logged too
    result = train(cfg, tmp_path / "boxed", resume=True, device="cpu", progress_bar=False)
    assert result.step == 5
    for prefix in ("model.", "ema.", "optimizer."):
        a, b = weights(tmp_path / "straight", 5, prefix), weights(tmp_path / "boxed", 5, prefix)
        assert all(torch.equal(a[k], b[k]) for k in a), prefix
    with pytest.raises(ValueError, match="max_seconds"):
        train(cfg, tmp_path / "never", device="cpu", progress_bar=False, max_seconds=0)
    clock = iter(range(0, 1000, 10))  # the limit passes at the last step: the run simply ends there
    monkeypatch.setattr(loop, "_now", lambda: float(next(clock)))
    done = train(tiny(steps=3, ckpt_every=2, log_every=2), tmp_path / "last", device="cpu", progress_bar=False,
                 max_seconds=25)
    assert done.step == 3 and [m["step"] for m in metrics(tmp_path / "last")] == [2, 3]


def test_resume_trains_at_the_changed_peak_lr(tmp_path):
    cfg = tiny(steps=4, ckpt_every=2, lr_schedule="wsd", decay_steps=2)  # warmup 2, cooldown over steps 3-4
    train(cfg, tmp_path / "run", device="cpu", progress_bar=False)
    result = train(cfg.override({"steps": 6, "lr": 5e-4}), tmp_path / "run", resume=True, device="cpu",
                   progress_bar=False)
    assert result.step == 6
    lrs = {m["step"]: m["lr"] for m in metrics(tmp_path / "run")}
    assert lrs[2] == pytest.approx(1e-3)  # before the resume: the first config's peak
    resumed = cfg.override({"steps": 6, "lr": 5e-4})  # cooldown over steps 5-6 now, from the new peak
    assert [lrs[5], lrs[6]] == pytest.approx([5e-4 * lr_factor(s - 1, resumed) for s in (5, 6)])
    assert lrs[5] == pytest.approx(5e-4 * 0.55)


def test_non_finite_loss_skips_the_update_and_is_logged(tmp_path, monkeypatch):
    real_load = tdata.load_batch

    def poisoned_step_2(ds, order, indices, seed, device, *rest):
        batch = real_load(ds, order, indices, seed, device, *rest)
        if indices.start == 4:  # the second step's batch (batch size 4)
            batch.audio[0, 100] = float("nan")
        return batch

    monkeypatch.setattr(tdata, "load_batch", poisoned_step_2)
    result = train(tiny(steps=3, ckpt_every=1, keep_last=5), tmp_path / "run", device="cpu", progress_bar=False)
    assert result.skipped_steps == 1
    run = tmp_path / "run"
    before, after = weights(run, 1), weights(run, 2)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update from the NaN batch
    assert all(torch.equal(a, b) for a, b in zip(weights(run, 1, "ema.").values(), weights(run, 2, "ema.").values()))
    assert not all(torch.equal(before[k], weights(run, 3)[k]) for k in before)  # training went on
    skipped = [m for m in metrics(run) if m.get("skipped")]
    assert [m["step"] for m in skipped] == [2] and skipped[0]["loss"] is None  # strict JSON: NaN is null
    assert read_checkpoint(checkpoint_path(run, 3))[1]["progress"] == {"step": 3, "data_position": 12,
                                                                        "skipped_steps": 1}


@pytest.mark.slow
def test_sample_clips_are_written_during_training(tmp_path):
    api_training.train(tiny(steps=2, sample_every=2), tmp_path / "run", device="cpu", progress_bar=False)
    folder = tmp_path / "run" / "samples" / "step-00000002"
    assert len(list(folder.glob("*.mp4"))) == 2 and len(list(folder.glob("*.png"))) == 2
    last = metrics(tmp_path / "run")[-1]
    assert {"step": 2, "samples": "samples/step-00000002"}.items() <= last.items()
    assert 0 <= last["event_count_ok"] <= 1 and {"av_onset_f1", "abs_av_offset_ms"} <= last.keys()
    # two steps from zero-initialised output layers: both clips are a flat grey picture and near silence,
    # so no event is detected and neither clip has its prompt's (>= 1) event count
    from avgen.data.io import decode_av

    for path in sorted(folder.glob("*.mp4")):
        d = decode_av(path)
        assert d.frames.max() - d.frames.min() < 40 and np.abs(d.audio).max() < 0.01, path.name
    assert last["event_count_ok"] == 0.0 and last["video_count_accuracy"] == last["audio_count_accuracy"] == 0.0


def test_quick_eval_figures_separate_synced_from_shifted_clips():
    # what is tested is the adapter to the evaluation suite (the suite's own controls test its detectors)
    ds = make_dataset("shapes", spec=ClipSpec())
    clips = [ds[i] for i in range(4)]
    frame_ms = 1000 / 16
    synced = api_training.quick_eval_figures(clips)
    # one prompt that asks for an event more than its clip holds: that clip's counts are not ok
    miscounted = [dataclasses.replace(c, prompt=c.prompt + " " + c.prompt.split()[0]) if i == 1 else c
                  for i, c in enumerate(clips)]
    assert api_training.quick_eval_figures(miscounted)["event_count_ok"] == 0.75
    for clip in clips:  # audio three frames late
        clip.audio = np.roll(clip.audio, 3 * len(clip.audio) // clip.num_frames)
    shifted = api_training.quick_eval_figures(clips)
    assert synced["abs_av_offset_ms"] < frame_ms / 2
    assert abs(shifted["abs_av_offset_ms"] - 3 * frame_ms) < frame_ms / 2
    assert synced["av_onset_f1"] >= shifted["av_onset_f1"] + 0.5
    assert 0 <= synced["event_count_ok"] <= 1
    assert synced["event_count_ok"] == 1.0  # real clips: both modalities show exactly the prompt's events


# ---------------------------------------------------------------------------- export and fine-tuning
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    train(tiny(steps=2), run, device="cpu", progress_bar=False)
    return run


def test_export_writes_a_pipeline_folder_of_the_ema_weights(trained_run, tmp_path):
    report = export_run(trained_run, tmp_path / "weights")
    assert report.step == 2 and report.fp16_max_abs_diff is None
    out = tmp_path / "weights"
    assert {"model_index.json", "transformer", "scheduler", "audio_scheduler", "training_config.json",
            "export.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "training_config.json").read_text()) == tiny(steps=2).to_dict()
    pipe = AVGenPipeline.from_pretrained(out, local_files_only=True)
    ema, _ = load_ema_weights(latest_checkpoint(trained_run))
    assert all(torch.equal(v, ema[k]) for k, v in pipe.transformer.state_dict().items())
    pipe.set_progress_bar_config(disable=True)
    clip = pipe("cross", num_inference_steps=1, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    spec = tiny().spec
    assert clip.frames.shape == (1, spec.num_frames, spec.height, spec.width, 1)
    assert clip.audio.shape == (1, spec.num_samples)
    with pytest.raises(FileExistsError):
        export_run(trained_run, out)


def test_fp16_export_is_measured_and_loads_back_as_fp32(trained_run, tmp_path):
    report = export_run(trained_run, tmp_path / "w16", dtype="float16")
    assert 0 <= report.fp16_max_abs_diff < 1e-2
    assert json.loads((tmp_path / "w16" / "export.json").read_text())["fp16_max_abs_diff"] == report.fp16_max_abs_diff
    pipe = AVGenPipeline.from_pretrained(tmp_path / "w16", local_files_only=True)
    assert pipe.transformer.dtype == torch.float32
    reference, _ = model_from_checkpoint(latest_checkpoint(trained_run))
    for k, v in pipe.transformer.state_dict().items():
        assert torch.equal(v, reference.state_dict()[k].half().float()), k
    with pytest.raises(ValueError, match="export as float32"):
        export_run(trained_run, tmp_path / "strict", dtype="float16", fp16_tolerance=0.0)


def test_init_from_starts_from_exported_weights_and_keeps_their_shape(trained_run, tmp_path):
    export_run(trained_run, tmp_path / "weights")
    other_size = tiny(steps=1).override(["model.hidden_size=32", "model.depth=1"])
    run = tmp_path / "finetune"
    cfg, _, trainer, progress = loop.setup_training(other_size, run, False, tmp_path / "weights", None, CPU,
                                                    lambda msg: None)
    assert progress == state.Progress()
    assert cfg.model == tiny().model  # the pretrained network's size wins over the preset's
    exported = AVGenPipeline.from_pretrained(tmp_path / "weights", local_files_only=True).transformer
    assert all(torch.equal(v, exported.state_dict()[k]) for k, v in trainer.model.state_dict().items())
    train(other_size, run, init_from=tmp_path / "weights", device="cpu", progress_bar=False)
    assert record.read_run_config(run).model == tiny().model
    with pytest.raises(FileNotFoundError, match="no model weights at"):
        train(tiny(), tmp_path / "bad", init_from=tmp_path, device="cpu", progress_bar=False)


def test_grow_depth_appends_identity_blocks_that_training_opens(trained_run, tmp_path):
    export_run(trained_run, tmp_path / "weights")
    exported = AVGenPipeline.from_pretrained(tmp_path / "weights", local_files_only=True).transformer.eval()
    depth = exported.config.depth
    cfg, _, trainer, _ = loop.setup_training(tiny(steps=2), tmp_path / "grown", False, tmp_path / "weights", None,
                                             CPU, lambda msg: None, grow_depth=depth + 2)
    grown = trainer.model.eval()
    assert cfg.model.depth == depth + 2 == grown.config.depth == len(grown.blocks)
    assert all(torch.equal(v, grown.state_dict()[k]) for k, v in exported.state_dict().items())
    g = torch.Generator().manual_seed(0)
    n, dims = 8, {"video": exported.config.video_dim, "audio": exported.config.audio_dim}
    args = (torch.randn(2, n, dims["video"], generator=g), torch.randn(2, n, dims["audio"], generator=g),
            torch.tensor([0.3, 0.9]), torch.tensor([0.5, 0.7]), torch.tensor([[1, 0, 0], [2, 3, 0]]),
            torch.tensor([[True, False, False], [True, True, False]]))
    with torch.no_grad():
        before, after = exported(*args), grown(*args)
    assert all(torch.equal(before[m], after[m]) for m in before)  # the new blocks start as the identity
    result = train(tiny(steps=2), tmp_path / "grown", init_from=tmp_path / "weights", grow_depth=depth + 2,
                   device="cpu", progress_bar=False)
    trained, _ = model_from_checkpoint(result.checkpoint)
    assert trained.config.depth == depth + 2 and record.read_run_config(tmp_path / "grown").model.depth == depth + 2
    new_gate = trained.blocks[depth].ada["video"][-1].weight
    assert new_gate.abs().sum() > 0  # training opened the new blocks
    with pytest.raises(ValueError, match="deeper, not shallower"):
        loop.setup_training(tiny(), tmp_path / "shallow", False, tmp_path / "weights", None, CPU, lambda m: None,
                            grow_depth=depth - 1)
    with pytest.raises(ValueError, match="--init-from"):
        loop.setup_training(tiny(), tmp_path / "nothing", False, None, None, CPU, lambda m: None, grow_depth=4)


# ---------------------------------------------------------------------------- CLI
def test_cli_train_resume_and_export(tmp_path, capsys):
    run, out = str(tmp_path / "run"), str(tmp_path / "weights")
    assert cli(["train", "--preset", "tiny", "--out", run, "--steps", "2", "--device", "cpu", "--no-progress",
                "--set", "ckpt_every=1"]) == 0
    assert cli(["train", "--out", run, "--resume", "--steps", "3", "--device", "cpu", "--no-progress"]) == 0
    assert record.read_run_config(run).steps == 3 and latest_checkpoint(run) == checkpoint_path(run, 3)
    assert cli(["export", run, "--out", out]) == 0
    assert "step 3 EMA weights" in capsys.readouterr().out
    assert cli(["export", run, "--out", out]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err


def test_cli_export_of_an_older_checkpoint_and_replacing_an_export(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "weights"
    train(tiny(steps=4, ckpt_every=2), run, device="cpu", progress_bar=False)
    older = checkpoint_path(run, 2)
    assert older.is_file() and latest_checkpoint(run) == checkpoint_path(run, 4)

    def exported() -> tuple[dict, dict]:
        net = AVGenPipeline.from_pretrained(out, local_files_only=True).transformer
        return json.loads((out / "export.json").read_text()), net.state_dict()

    def ema_of(step: int) -> dict:
        return load_ema_weights(checkpoint_path(run, step))[0]

    assert cli(["export", str(run), "--out", str(out), "--checkpoint", str(older)]) == 0
    assert "step 2 EMA weights" in capsys.readouterr().out
    info, net = exported()
    assert (info["step"], info["checkpoint"]) == (2, older.name)
    assert all(torch.equal(v, ema_of(2)[k]) for k, v in net.items())
    assert not all(torch.equal(v, ema_of(4)[k]) for k, v in net.items())  # the two checkpoints differ
    # --out exists: refused without --force (one line, exit 2), the export left as it was
    capsys.readouterr()  # (loading the export above wrote diffusers' progress bar to stderr)
    assert cli(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{out} already exists; pass --force to replace it" in err
    assert exported()[0]["step"] == 2
    # with --force: replaced, here by the newest checkpoint's weights, and no temp folder is left behind
    assert cli(["export", str(run), "--out", str(out), "--force"]) == 0
    assert "step 4 EMA weights" in capsys.readouterr().out
    info, net = exported()
    assert (info["step"], info["checkpoint"]) == (4, checkpoint_path(run, 4).name)
    assert all(torch.equal(v, ema_of(4)[k]) for k, v in net.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "weights"]


def test_cli_resume_with_another_batch_size_goes_on_from_the_saved_data_position(tmp_path, capsys):
    """data.py: step s trains on samples [position, position + B); a changed batch size on resume
    goes on from the position saved, by the new B per step."""
    run = str(tmp_path / "run")
    assert cli(["train", "--preset", "tiny", "--out", run, "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    assert read_checkpoint(checkpoint_path(run, 2))[1]["progress"]["data_position"] == 2 * 4  # tiny: batch 4
    capsys.readouterr()
    assert cli(["train", "--out", run, "--resume", "--steps", "4", "--set", "batch_size=3", "--device", "cpu",
                "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "at step 2 (config changed: batch_size, steps)" in err
    assert record.read_run_config(run).batch_size == 3
    logged = metrics(tmp_path / "run")
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    assert [m["samples_seen"] for m in logged] == [4, 8, 11, 14]
    assert all(math.isfinite(m["loss"]) for m in logged)
    assert read_checkpoint(checkpoint_path(run, 4))[1]["progress"] == {"step": 4, "data_position": 14,
                                                                        "skipped_steps": 0}


def test_cli_resume_of_a_run_that_never_saved_a_checkpoint_starts_it_from_scratch(tmp_path, capsys, monkeypatch):
    """A run that died before its first checkpoint leaves config.json (and log lines); `--resume` trains it
    from step 0 with that config: the same weights as an uninterrupted run, each step logged once."""
    def crash(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(state, "save_training_state", crash)  # dies at its first checkpoint, before writing it
    argv = ["--device", "cpu", "--no-progress"]
    new_run = ["train", "--preset", "tiny", "--steps", "2", "--set", "lr=2e-3", *argv]
    with pytest.raises(Interrupted):
        cli([*new_run, "--out", str(tmp_path / "died")])
    monkeypatch.undo()
    died = tmp_path / "died"
    assert latest_checkpoint(died) is None and (died / "config.json").is_file()
    assert [m["step"] for m in metrics(died)] == [1, 2]
    capsys.readouterr()
    assert cli(["train", "--out", str(died), "--resume", *argv]) == 0  # no --preset: the run's own config
    assert "resumed from" not in capsys.readouterr().err
    assert record.read_run_config(died).lr == 2e-3
    assert [(m["step"], m["samples_seen"]) for m in metrics(died)] == [(1, 4), (2, 8)]  # the dead run's lines went
    assert cli([*new_run, "--out", str(tmp_path / "straight")]) == 0
    for prefix in ("model.", "ema.", "optimizer."):
        a, b = weights(tmp_path / "straight", 2, prefix), weights(died, 2, prefix)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), prefix


@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "X"], "--preset"),
    (["train", "--preset", "tiny", "--out", "X", "--set", "learning_rate=1"], "unknown option 'learning_rate'"),
    (["train", "--preset", "tiny", "--out", "X", "--dataset", "mnist"], "unknown dataset"),
    (["export", "no-such-run", "--out", "Y"], "no checkpoint"),
    (["train", "--preset", "tiny", "--out", "X", "--grow-depth", "4"], "--init-from"),
    (["train", "--preset", "tiny", "--out", "X", "--max-minutes", "0"], "--max-minutes"),
    (["train", "--preset", "tiny", "--out", "X", "--workers", "-1"], "--workers"),
])
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------- real data
def test_augmentation_is_for_talking_digits_training_clips_only():
    with pytest.raises(ValueError, match="apply to talking-digits"):
        tdata.build_dataset(tiny(augment_speed=0.1))
    assert tdata.build_dataset(tiny(augment_speed=0.1), split="test").name == "shapes"  # never the test split


@pytest.mark.data
def test_augmented_runs_keep_the_recorded_event_lengths_for_the_layout_prior(data_root):
    cfg = tiny().override({"dataset": "talking-digits", "augment_speed": 0.2, "augment_shift_px": 2,
                           "model.timeline_cond": True})
    train_ds, test_ds = tdata.build_dataset(cfg, data_root), tdata.build_dataset(cfg, data_root, split="test")
    assert (train_ds.augment_speed, train_ds.augment_shift_px) == (0.2, 2) and test_ds.augment_speed == 0
    plain = tdata.build_dataset(cfg.override({"augment_speed": 0.0, "augment_shift_px": 0}), data_root)
    assert surgery.layout_prior(train_ds, cfg, 200) == surgery.layout_prior(plain, cfg, 200)


@pytest.mark.data
@pytest.mark.slow
def test_a_step_on_uint8_frames_is_the_step_on_their_floats(data_root):
    cfg = tiny().override({"dataset": "talking-digits"})
    ds = tdata.build_dataset(cfg, data_root)
    order = SampleOrder(len(ds), cfg.data_seed, shuffle=False)
    losses = []
    for unpack in (False, True):
        torch.manual_seed(0)
        trainer = state.Trainer.create(cfg, surgery.build_model(cfg, ds), CPU)
        batch = tdata.load_batch(ds, order, range(4), cfg.seed, CPU.device, 1, trainer.draw_spec())
        assert batch.frames.dtype == torch.uint8
        if unpack:
            batch = dataclasses.replace(batch, frames=tdata.unpack_frames(batch.frames))
        losses.append(trainer.step(batch, 0).loss)
    assert losses[0] == losses[1]


def test_a_few_steps_on_talking_digits(data_root, tmp_path):
    cfg = tiny(steps=2).override({"dataset": "talking-digits"})
    result = train(cfg, tmp_path / "run", device="cpu", data_root=data_root, progress_bar=False)
    assert result.step == 2 and math.isfinite(result.last_loss)
    vocab = model_from_checkpoint(result.checkpoint)[0].config.vocab
    assert list(vocab) == [str(d) for d in range(10)]
    assert np.isfinite([m["loss"] for m in metrics(tmp_path / "run")]).all()
