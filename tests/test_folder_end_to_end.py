"""A user's own captioned clips, end to end, as the README guide runs them (tiny config): the folder's
timelines, judges for its labels, training from scratch and fine-tuning with a new vocabulary, export,
generate, eval --generate with the folder's judges, and the studio on the exported folder."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from avgen.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def make_folder(out: Path, n: int, kinds: str = "toys") -> Path:
    spec = importlib.util.spec_from_file_location("make_example_folder", ROOT / "scripts" / "make_example_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_folder(out, n, kinds)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("own") / "toys", 20)


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVGEN_CACHE", str(tmp_path_factory.getbasetemp() / "folder-cache"))


def test_stats_say_which_clips_got_a_timeline(folder, capsys):
    assert main(["data", "stats", "--dataset", f"folder:{folder}", "--n", "4"]) == 0
    report = json.loads(capsys.readouterr().out)["timelines"]
    assert report["vocab"] == ["bell", "drum", "whistle"]
    assert report["windows_with_timeline"] == report["windows"] == report["files"] == 20 - report["held_out_files"]


def test_judges_for_the_folder_and_their_refusal_when_unreliable(folder, tmp_path, capsys):
    judges = tmp_path / "judges"
    assert main(["judges", "train", "--dataset", f"folder:{folder}", "--out", str(judges), "--tiny",
                 "--holdout", "0.3"]) == 0
    out = capsys.readouterr().out
    info = json.loads((judges / "image.json").read_text())
    assert info["config"]["labels"] == ["bell", "drum", "whistle"] and 0 <= info["heldout_accuracy"] <= 1
    assert f"{info['heldout_accuracy']:.1%} of {info['heldout_events']} held-out events read right" in out
    info["heldout_accuracy"] = 0.25  # as if they read a quarter of the held-out events right
    (judges / "image.json").write_text(json.dumps(info))
    weights = tmp_path / "w"
    from tests.demo_helpers import make_tiny_weights
    make_tiny_weights(weights)
    assert main(["eval", "--generate", "1", "--weights", str(weights), "--dataset", f"folder:{folder}", "--judges",
                 str(judges), "--steps", "1"]) == 2
    assert ("the picture judge in " + str(judges) + " reads only 25% of its held-out events right (under 80%)"
            in capsys.readouterr().err)


def test_train_export_generate_eval_and_serve_on_the_folder(folder, tmp_path, capsys):
    run, weights, judges = tmp_path / "run", tmp_path / "w", tmp_path / "judges"
    assert main(["train", "--preset", "tiny", "--dataset", f"folder:{folder}", "--out", str(run), "--no-progress",
                 "--set", "steps=4", "--set", "spec.channels=3", "--set", "holdout=0.3",
                 "--set", "model.label_probe=true", "--set", "objective.label_weight=0.1",
                 "--set", "val_every=2", "--set", "sample_every=4"]) == 0
    held = json.loads((run / "run.json").read_text())["held_out_files"]
    from avgen.data import make_dataset
    assert held == make_dataset(f"folder:{folder}", split="test", holdout=0.3).held_out_files and held
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_x0_video@0.3" in m for m in metrics)  # validated on the held-out files
    assert any("label_ce" in m for m in metrics) and any(m.get("samples") for m in metrics)
    assert main(["export", str(run), "--out", str(weights)]) == 0
    config = json.loads((weights / "transformer" / "config.json").read_text())
    assert config["vocab"] == ["bell", "drum", "whistle"] and config["clip_spec"]["channels"] == 3
    assert config["example_prompts"] and all(set(p.split()) <= {"bell", "drum", "whistle"}
                                              for p in config["example_prompts"])
    assert set(json.loads(json.dumps(config["layout_prior"]["counts"]))) == {"bell", "drum", "whistle"}
    clip = tmp_path / "clip.mp4"
    assert main(["generate", "bell, drum", "--weights", str(weights), "--out", str(clip), "--steps", "2"]) == 0
    sidecar = json.loads(clip.with_suffix(".json").read_text())
    assert sidecar["prompt"] == "bell drum" and [e[0] for e in sidecar["timeline"]] == ["bell", "drum"]
    assert main(["generate", "3 1 4", "--weights", str(weights), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "the labels bell, drum, whistle; '3' is not one" in capsys.readouterr().err
    assert main(["judges", "train", "--dataset", f"folder:{folder}", "--out", str(judges), "--tiny",
                 "--holdout", "0.3"]) == 0
    for name in ("image", "speech"):  # tiny judges on 20 clips: recorded as reliable, to exercise the scoring
        info = json.loads((judges / f"{name}.json").read_text())
        (judges / f"{name}.json").write_text(json.dumps({**info, "heldout_accuracy": 0.9}))
    report = tmp_path / "eval.json"
    assert main(["eval", "--generate", "3", "--weights", str(weights), "--dataset", f"folder:{folder}",
                 "--judges", str(judges), "--steps", "2", "--json", str(report), "--no-plots"]) == 0
    summary = json.loads(report.read_text())["summary"]
    assert summary["n_clips"] == 3 and "video_digit_accuracy" in summary and "audio_digit_accuracy" in summary
    clips = json.loads(report.read_text())["clips"]
    assert all(set(c["prompt"].split()) <= {"bell", "drum", "whistle"} and c["prompt"] for c in clips)
    capsys.readouterr()
    # the studio on the exported folder: its vocabulary in the prompt's help, its captions as examples
    from avgen.demo.app import build_app

    app = build_app(weights, "cpu", workdir=tmp_path / "app", warm_up=False)
    page = json.dumps(app.config)
    assert "the labels bell, drum, whistle" in page
    assert all(p in page for p in config["example_prompts"][:3]) and "9 0 6" not in page  # not the digit seeds


def test_fine_tuning_grows_the_vocabulary_and_keeps_the_rest(folder, tmp_path):
    """A grey model trained on other labels (shapes' glyphs) fine-tuned on the colour folder in RGB: the
    folder's words are appended to its vocabulary, the video layers take colour, the glyphs' embeddings
    and every other weight start where they were."""
    base_run, base, tuned = tmp_path / "base", tmp_path / "base-w", tmp_path / "tuned"
    assert main(["train", "--preset", "tiny", "--dataset", "shapes", "--out", str(base_run), "--no-progress",
                 "--set", "steps=2", "--set", "spec.duration=3.0"]) == 0
    assert main(["export", str(base_run), "--out", str(base)]) == 0
    assert main(["train", "--preset", "tiny", "--dataset", f"folder:{folder}", "--init-from", str(base),
                 "--out", str(tuned), "--no-progress", "--set", "steps=1", "--set", "lr=1e-12",
                 "--set", "spec.channels=3"]) == 0
    from avgen.model.weights import load_network
    from avgen.train.checkpoint import latest_checkpoint, read_checkpoint

    before = load_network(base)
    tensors, meta = read_checkpoint(latest_checkpoint(tuned))
    vocab = meta["model_config"]["vocab"]
    assert vocab[:len(before.config.vocab)] == list(before.config.vocab) and vocab[-3:] == ["bell", "drum", "whistle"]
    grown = tensors["ema.label_embed.weight"]
    assert grown.shape[0] == len(before.config.vocab) + 3
    assert torch.allclose(grown[:len(before.config.vocab)], before.label_embed.weight, atol=1e-6)
    assert torch.allclose(tensors["ema.blocks.0.attn.qkv.weight"], before.blocks[0].attn.qkv.weight, atol=1e-6)
    # the folder is in colour and RGB was asked for: the grey model now reads luma and writes grey to RGB
    assert meta["model_config"]["clip_spec"]["channels"] == 3
    luma = torch.tensor([0.299, 0.587, 0.114])
    assert torch.allclose(tensors["ema.embed.video.weight"], (before.embed.video.weight[:, :, None] * luma).flatten(1),
                          atol=1e-6)


def test_an_uncaptioned_folder_trains_unconditionally_and_is_scored_for_sync(folder, tmp_path, capsys):
    """Without captions there is nothing to name: the folder still trains (unconditionally), and its
    generated clips are scored for sync and event counts, with no label figures made up."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in sorted(folder.iterdir())[:24]:
        if path.suffix != ".txt":
            (bare / path.name).write_bytes(path.read_bytes())
    assert main(["data", "stats", "--dataset", f"folder:{bare}", "--n", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["timelines"]["vocab"] == []
    run, weights, report = tmp_path / "run", tmp_path / "w", tmp_path / "eval.json"
    assert main(["train", "--preset", "tiny", "--dataset", f"folder:{bare}", "--out", str(run), "--no-progress",
                 "--set", "steps=2"]) == 0
    assert main(["export", str(run), "--out", str(weights)]) == 0
    assert main(["eval", "--generate", "2", "--weights", str(weights), "--dataset", f"folder:{bare}",
                 "--steps", "2", "--json", str(report), "--no-plots"]) == 0
    result = json.loads(report.read_text())
    assert result["summary"]["n_clips"] == 2 and "onset_f1" in result["summary"]
    assert "video_count_accuracy" in result["summary"] or "av_count_agreement" in result["summary"]
    assert not any("digit_accuracy" in k or "agreement" == k for k in result["summary"])
    assert all(c["prompt"] == "" for c in result["clips"])
    capsys.readouterr()
    assert main(["generate", "", "--weights", str(weights), "--out", str(tmp_path / "u.mp4"), "--steps", "1"]) == 0
    capsys.readouterr()
    assert main(["generate", "bell", "--weights", str(weights), "--out", str(tmp_path / "b.mp4")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no labels" in err
    from avgen.demo.app import build_app

    build_app(weights, "cpu", workdir=tmp_path / "app", warm_up=False)  # the studio serves it too
