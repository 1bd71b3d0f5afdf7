"""The distilled student: the adapter, its folder, the fast sampler, the settings, `avgen distill`."""
import json

import numpy as np
import pytest
import torch

from avgen.api.generate import GenerateSettings, generate
from avgen.api.settings import SettingError
from avgen.cli import main
from avgen.model.pipeline import load_pipeline
from avgen.model.student import (ADAPTER_FILE, STUDENT_FOLDER, StudentConfig, adapter_state, attach_adapter,
                                 merge_adapter, save_student)
from avgen.model.weights import CheckpointError, weights_file
from avgen.util import sha256_file
from avgen.train.distill import DistillConfig, distill, trajectory_targets
from tests.demo_helpers import tiny_weights  # noqa: F401  (fixture)
from tests.test_pipeline import ForwardSpy, seeded, tiny_pipeline


def inputs(net, batch=2, tokens=16):
    g = torch.Generator().manual_seed(3)
    dims = {"video": net.config.video_dim, "audio": net.config.audio_dim}
    x = {m: torch.randn(batch, tokens, d, generator=g) for m, d in dims.items()}
    t = torch.rand(batch, generator=g)
    ids = torch.tensor([[3, 1, 0]] * batch)
    mask = torch.tensor([[True, True, False]] * batch)
    return (x["video"], x["audio"], t, t, ids, mask)


def randomised_adapter(net, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_b" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return net


def test_an_attached_adapter_starts_as_the_network_and_only_it_trains():
    teacher = tiny_pipeline().transformer
    before = teacher(*inputs(teacher))
    net = attach_adapter(tiny_pipeline().transformer, rank=4, alpha=4)
    after = net(*inputs(net))
    for m in ("video", "audio"):
        assert torch.equal(before[m], after[m])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)


def test_a_merged_adapter_computes_what_the_adapted_network_does():
    net = randomised_adapter(attach_adapter(tiny_pipeline().transformer, rank=4, alpha=8))
    cfg = StudentConfig(rank=4, alpha=8)
    merged = merge_adapter(tiny_pipeline().transformer, adapter_state(net), cfg)
    with torch.no_grad():
        a, b = net(*inputs(net)), merged(*inputs(merged))
    for m in ("video", "audio"):
        assert float((a[m] - b[m]).abs().max()) < 1e-4, m
    with torch.no_grad():
        plain = tiny_pipeline().transformer(*inputs(net))["video"]
    assert float((a["video"] - plain).abs().max()) > 1e-3


def with_student(weights, tmp_path, rank=4, levels=(1.0, 0.5), sha=None):
    """A copy of a weights folder with a random student."""
    import shutil

    folder = tmp_path / "w"
    shutil.copytree(weights, folder)
    net = randomised_adapter(attach_adapter(load_pipeline(folder).transformer, rank=rank, alpha=rank))
    save_student(folder / STUDENT_FOLDER, adapter_state(net),
                 StudentConfig(levels=levels, rank=rank, alpha=rank, teacher_sha256=sha or sha256_file(weights_file(folder))))
    return folder


def test_a_student_folder_loads_and_refuses_other_weights_or_shapes(tiny_weights, tmp_path):
    folder = with_student(tiny_weights, tmp_path)
    pipe = load_pipeline(folder)
    assert pipe.student is not None and pipe.student_config.levels == (1.0, 0.5)
    cfg = json.loads((folder / STUDENT_FOLDER / "config.json").read_text())
    (folder / STUDENT_FOLDER / "config.json").write_text(json.dumps({**cfg, "teacher_sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="distilled from other weights"):
        load_pipeline(folder)
    (folder / STUDENT_FOLDER / "config.json").write_text(json.dumps({**cfg, "rank": 8}))
    with pytest.raises(CheckpointError, match=ADAPTER_FILE):
        load_pipeline(folder)


def test_the_fast_sampler_runs_the_student_once_per_level_without_an_unguided_pass(tiny_weights, tmp_path,
                                                                                  monkeypatch):
    pipe = load_pipeline(with_student(tiny_weights, tmp_path))
    pipe.set_progress_bar_config(disable=True)
    pipe.set_sampler("fast")
    spy = ForwardSpy(type("P", (), {"transformer": pipe.student})(), monkeypatch)
    out = pipe("3 1", num_inference_steps=2, generator=seeded(0), guidance_scale=6.0, modality_scale=2.0)
    assert out.frames.shape[0] == 1 and np.isfinite(out.audio).all()
    assert len(spy.calls) == 2 and all(c["video"].shape[0] == 1 for c in spy.calls)  # cond pass only
    assert [float(c["t_video"][0]) for c in spy.calls] == [1.0, 0.5]
    spy.calls.clear()
    pipe("3 1", num_inference_steps=1, generator=seeded(0))
    assert len(spy.calls) == 1
    with pytest.raises(ValueError, match="1 to 2 passes"):
        pipe("3", num_inference_steps=3)
    with pytest.raises(ValueError, match="from a prompt only"):
        pipe("3", num_inference_steps=2, audio=np.zeros(24000, np.float32))


def test_the_fast_sampler_without_a_student_says_how_to_make_one(tiny_weights):
    pipe = load_pipeline(tiny_weights)
    with pytest.raises(ValueError, match="avgen distill"):
        generate(pipe, GenerateSettings(prompt="3", sampler="fast"))


def test_steps_default_to_the_samplers_own_and_fast_refuses_what_it_cannot_do():
    assert GenerateSettings().check().steps == 25
    assert GenerateSettings(sampler="fast").check().steps == 2
    assert GenerateSettings(sampler="fast", steps=1).check().steps == 1
    with pytest.raises(SettingError, match="1 to 2 passes, got steps 5"):
        GenerateSettings(sampler="fast", steps=5).check()
    with pytest.raises(SettingError, match="from a prompt"):
        GenerateSettings(sampler="fast", mode="a2v").check()


def test_trajectory_targets_land_on_a_straight_path():
    """On a straight path x_t = (1 - t) x0 + t noise every pass's target is x0, and its weight 1 - b/a."""
    g = torch.Generator().manual_seed(0)
    x0 = {m: torch.randn(3, 4, 5, generator=g) for m in ("video", "audio")}
    noise = {m: torch.randn(3, 4, 5, generator=g) for m in ("video", "audio")}
    pairs = {"level.1": torch.tensor(1.0), "level.0.5": torch.tensor(0.5), "level.0.25": torch.tensor(0.25)}
    for m in x0:
        pairs[f"{m}.1"], pairs[f"{m}.0"] = noise[m], x0[m]
        for lv in (0.5, 0.25):
            pairs[f"{m}.{lv:g}"] = (1 - lv) * x0[m] + lv * noise[m]
    passes = trajectory_targets(pairs, torch.arange(3), (1.0, 0.5, 0.25), (0.5, 0.25))
    assert [p[0] for p in passes] == [1.0, 0.5, 0.25] and [p[3] for p in passes] == [0.5, 0.5, 1.0]
    for _, _, target, _ in passes:
        for m in x0:
            assert torch.allclose(target[m], x0[m], atol=1e-5)


def test_distill_config_refuses_what_cannot_train():
    with pytest.raises(ValueError, match="not among the captured levels"):
        DistillConfig(levels=(1.0, 0.3)).check()
    with pytest.raises(ValueError, match="must be int"):
        DistillConfig().override({"steps": "many"})
    with pytest.raises(ValueError, match="unknown distill setting"):
        DistillConfig().override({"nope": 1})


SMALL = dict(clips=4, shard=2, batch_size=2, ckpt_every=2, log_every=1, rank=2, alpha=2, warmup=1, steps=4)


def test_distill_resumes_exactly_and_installs_a_student_the_fast_sampler_uses(tiny_weights, data_root, tmp_path):
    """A run stopped after its first step (a checkpoint, its LR already on the cosine) and continued ends
    bit for bit where an unbroken run does; the finished student is installed and sampled with."""
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_weights, teacher)
    straight = distill(teacher, tmp_path / "a", DistillConfig(**SMALL), data_root=data_root, log=lambda m: None)
    first = distill(teacher, tmp_path / "b", DistillConfig(**SMALL), data_root=data_root, max_seconds=1e-9,
                    log=lambda m: None)
    assert first.student is None and first.step in (0, 1)
    with pytest.raises(FileExistsError):
        distill(teacher, tmp_path / "b", DistillConfig(**SMALL), data_root=data_root)
    with pytest.raises(ValueError, match="other settings"):
        distill(teacher, tmp_path / "b", DistillConfig(**{**SMALL, "lr": 1e-3}), data_root=data_root, resume=True)
    while first.student is None:  # the teacher's shards, then the steps, each in a time box that ends at once
        first = distill(teacher, tmp_path / "b", DistillConfig(**SMALL), data_root=data_root, resume=True,
                        max_seconds=1e-9, into=teacher, log=lambda m: None)
    resumed = first
    a = (straight.student / ADAPTER_FILE).read_bytes()
    assert a == (resumed.student / ADAPTER_FILE).read_bytes()
    pipe = load_pipeline(teacher)
    assert pipe.student is not None and pipe.student_config.teacher["steps"] == 25
    clip = generate(pipe, GenerateSettings(prompt="3 1", sampler="fast", seed=1))[0]
    assert clip.frames.shape == (48, 32, 32, 1) and np.isfinite(clip.audio).all()
    assert DistillConfig(**SMALL).lr != 0 and (tmp_path / "b" / "teacher.json").is_file()
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in lines)


def test_distill_cli_refuses_bad_settings_in_one_line(tiny_weights, tmp_path, capsys):
    assert main(["distill", "--weights", str(tiny_weights), "--out", str(tmp_path / "r"), "--set", "nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown distill setting" in err
