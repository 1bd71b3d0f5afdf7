"""`avgen eval` end to end: files and folders, unreadable files, prompt manifests, dataset controls,
JSON keys, plots, summary statistics, and `--generate` with a tiny untrained model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from avgen.cli import main
from avgen.data import ClipSpec, make_dataset
from avgen.data.io import to_uint8_rgb, upscale, write_mp4, write_video
from avgen.eval.suite import Control, control_clip, scatter_events, sequence_score, shift_clip, summarise

CLIP_KEYS = {"path", "av_offset_ms", "offset_confidence", "video_onsets_s", "audio_onsets_s", "onset_f1", "av_align"}


@pytest.fixture(scope="module")
def shapes_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("shapes")
    ds = make_dataset("shapes", split="test")
    return [write_mp4(ds[i], d / f"clip{i}.mp4") for i in range(3)]


def test_files_and_folders_give_records_summary_and_plots(shapes_files, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["eval", str(shapes_files[0]), str(shapes_files[0].parent), "--json", str(out), "--no-judges"]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["clips"]) == 4  # the file, then the folder's three
    for rec in doc["clips"]:
        assert CLIP_KEYS <= set(rec) and abs(rec["av_offset_ms"]) < 15 and rec["onset_f1"] == 1.0
    s = doc["summary"]
    assert s["n_clips"] == 4 and s["onset_f1"]["mean"] == 1.0 and len(s["av_offset_ms"]["ci95"]) == 2
    assert (tmp_path / "out.envelopes.png").stat().st_size > 10_000
    assert (tmp_path / "out.offsets.png").stat().st_size > 5_000
    table = capsys.readouterr().out
    assert "av_offset_ms" in table and "clip0.mp4" in table


def test_unreadable_files_get_an_error_and_the_run_goes_on(shapes_files, tmp_path):
    silent = tmp_path / "silent.mp4"
    clip = make_dataset("shapes", split="test")[0]
    write_video(silent, to_uint8_rgb(upscale(clip.frames, 4)), clip.fps)  # no audio track
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    out = tmp_path / "o.json"
    assert main(["eval", str(silent), str(junk), str(shapes_files[1]), "--json", str(out), "--no-judges", "--no-plots"]) == 0
    recs = json.loads(out.read_text())["clips"]
    assert "no audio track" in recs[0]["error"] and "cannot open" in recs[1]["error"]
    assert "error" not in recs[2] and json.loads(out.read_text())["summary"]["n_errors"] == 2


def test_bad_invocations_are_one_line_usage_errors(tmp_path, capsys):
    assert main(["eval"]) == 2
    assert main(["eval", str(tmp_path / "nope.mp4")]) == 2
    assert main(["eval", "--dataset", "shapes", "--generate", "2"]) == 2  # no --weights
    assert main(["eval", str(tmp_path), "--shift-ms", "30"]) == 2  # controls need --dataset
    assert main(["eval", "--dataset", "shapes", "--duration", "6"]) == 2  # --duration is for --generate
    assert main(["eval", "--dataset", "shapes", "--frechet"]) == 2  # FD lives in the digit judges' features
    err = capsys.readouterr().err
    assert err.count("error:") == 6 and "Traceback" not in err


def test_dataset_controls_on_shapes_through_the_cli(tmp_path):
    runs = {}
    for name, flags in {"ceiling": [], "shift": ["--shift-ms", "125"], "random": ["--random-events"]}.items():
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--dataset", "shapes", "--n", "8", "--json", str(out), "--no-plots", *flags]) == 0
        runs[name] = json.loads(out.read_text())
    ceiling, shift, rand = (runs[k]["summary"] for k in ("ceiling", "shift", "random"))
    assert ceiling["onset_f1_video_gt"]["mean"] == 1.0 and ceiling["onset_f1_audio_gt"]["mean"] == 1.0
    assert ceiling["onset_f1"]["mean"] == 1.0 and ceiling["median_abs_offset_ms"]["value"] <= 15
    # the shapes template judges read every glyph and tone of real clips (through mp4)
    assert ceiling["video_digit_accuracy"]["value"] == 1.0 and ceiling["audio_digit_accuracy"]["value"] == 1.0
    assert ceiling["av_agreement"]["value"] == 1.0
    assert ceiling["video_count_accuracy"]["value"] == 1.0 and ceiling["audio_count_accuracy"]["value"] == 1.0
    assert rand["audio_count_accuracy"]["n_clips"] == 8  # scattered events: still one per label
    # the audio ground truth moves with the shift: the detector still finds it
    assert shift["onset_f1_audio_gt"]["mean"] >= 0.9 and shift["onset_f1"]["mean"] < 0.5
    assert abs(shift["av_offset_ms"]["median"] - 125 - ceiling["av_offset_ms"]["median"]) <= 15
    assert rand["onset_f1"]["mean"] < 0.6 and rand["onset_f1_audio_gt"]["mean"] >= 0.9
    assert runs["shift"]["control"] == "shift +125 ms"


def test_shift_moves_the_sound_against_the_picture_and_loses_nothing():
    clip = make_dataset("shapes", split="test")[0]  # 16 fps, 500 samples per frame
    late, dv, da = shift_clip(clip, 30.0)
    assert (dv, da) == (0.0, 0.03) and np.array_equal(late.audio[240: 240 + len(clip.audio)], clip.audio)
    assert np.array_equal(late.frames[: clip.num_frames], clip.frames) and len(late.audio) == late.num_frames * 500
    early, dv, da = shift_clip(clip, -80.0)  # two blank frames before the picture, 45 ms of silence before the sound
    assert (dv, da) == (0.125, 0.045) and np.array_equal(early.frames[2: 2 + clip.num_frames], clip.frames)
    assert not early.frames[:2].any() and da - dv == pytest.approx(-0.080)


def test_controls_keep_the_picture_and_move_only_the_sound():
    ds = make_dataset("shapes", split="test")
    base, truth = control_clip(ds, 3, Control(), 10, 0)
    swapped, t_swap = control_clip(ds, 3, Control(swap_audio=True), 10, 0)
    assert np.array_equal(base.frames, swapped.frames) and np.array_equal(swapped.audio, ds[4].audio)
    assert t_swap.video == truth.video and t_swap.audio == [e.start_s for e in ds[4].events]
    audio, starts = scatter_events(base, ds, np.random.default_rng(0))
    assert len(starts) == len(base.events) and np.isclose(np.abs(audio).sum(), np.abs(base.audio).sum(), rtol=1e-4)


def test_sequence_scores_count_missing_extra_and_misread_events():
    assert sequence_score(["3", "1", "4"], ["3", "1", "4"]) == (3, 3)
    assert sequence_score(["3", "1", "4"], ["3", "4"]) == (1, 3)  # the missing 1 shifts the 4
    assert sequence_score(["3"], ["3", "3"]) == (1, 2)
    assert sequence_score([], []) == (0, 0)


def test_summary_pools_accuracy_and_counts_undefined_values():
    recs = [{"av_offset_ms": 1.0, "abs_offset_ms": 1.0, "onset_f1": 1.0, "video_digit_counts": [2, 3]},
            {"av_offset_ms": math.nan, "abs_offset_ms": math.nan, "onset_f1": math.nan, "video_digit_counts": [1, 1]},
            {"path": "x", "error": "unreadable"}]
    s = summarise(recs)
    assert s["n_errors"] == 1 and s["av_offset_ms"]["n"] == 1 and s["av_offset_ms"]["n_undefined"] == 1
    assert s["video_digit_accuracy"]["value"] == pytest.approx(3 / 4)


@pytest.mark.data
def test_prompt_manifest_gives_external_clips_digit_accuracy(tmp_path, data_root):
    ds = make_dataset("talking-digits", split="test", data_root=data_root)
    clips = [ds[i] for i in range(3)]
    for i, c in enumerate(clips):
        write_mp4(c, tmp_path / f"ext{i}.mp4")
    (tmp_path / "prompts.json").write_text(json.dumps({f"ext{i}.mp4": c.prompt for i, c in enumerate(clips)}))
    out = tmp_path / "o.json"
    assert main(["eval", str(tmp_path), "--prompts", str(tmp_path / "prompts.json"), "--json", str(out),
                 "--no-plots"]) == 0
    doc = json.loads(out.read_text())
    for rec, c in zip(doc["clips"], clips):
        assert rec["prompt"] == c.prompt and rec["video_digits"] == c.prompt.split()
    assert doc["summary"]["video_digit_accuracy"]["value"] == 1.0
    # 7 events; the speech judge (98.7 % on mp4) mishears one "8" as "6" here
    assert doc["summary"]["audio_digit_accuracy"]["value"] >= 0.8 and doc["summary"]["av_agreement"]["n_items"] == 7


@pytest.mark.data
@pytest.mark.slow
def test_generate_mode_with_a_tiny_untrained_model(tmp_path, data_root):
    import torch

    from avgen.model.pipeline import AVGenPipeline
    from avgen.model.transformer import AVDiT

    torch.manual_seed(0)
    model = AVDiT.from_preset("AVDiT-T", ClipSpec(duration=1.0), tuple("0123456789"), 3)
    AVGenPipeline.from_transformer(model.eval()).save_pretrained(tmp_path / "w")
    out = tmp_path / "gen.json"
    assert main(["eval", "--generate", "3", "--weights", str(tmp_path / "w"), "--steps", "2", "--device", "cpu",
                 "--json", str(out), "--no-plots"]) == 0
    s = json.loads(out.read_text())["summary"]
    for key in ("video_digit_accuracy", "audio_digit_accuracy", "onset_f1", "median_abs_offset_ms", "fd_video",
                "fd_audio", "kid_video", "kid_audio", "fd_video_floor", "fd_audio_floor"):
        assert key in s, key
    # an untrained model draws noise: far from real digits, in both judges' feature spaces
    assert s["fd_video"] > 3 * s["fd_video_floor"]["mean"] and s["fd_audio"] > 3 * s["fd_audio_floor"]["mean"]


@pytest.mark.slow
def test_generate_mode_on_shapes_reads_glyphs_and_takes_a_duration(tmp_path):
    import torch

    from avgen.data.shapes import GLYPHS
    from avgen.model.pipeline import AVGenPipeline
    from avgen.model.transformer import AVDiT

    torch.manual_seed(0)
    model = AVDiT.from_preset("AVDiT-T", ClipSpec(duration=1.0), tuple(GLYPHS), 3)
    AVGenPipeline.from_transformer(model.eval()).save_pretrained(tmp_path / "w")
    out = tmp_path / "gen.json"
    assert main(["eval", "--generate", "2", "--dataset", "shapes", "--weights", str(tmp_path / "w"), "--steps", "2",
                 "--duration", "2", "--device", "cpu", "--json", str(out), "--no-plots"]) == 0
    doc = json.loads(out.read_text())
    assert all(rec["duration_s"] == 2.0 for rec in doc["clips"])  # twice the training duration
    assert "video_digit_counts" in doc["clips"][0] and "fd_video" not in doc["summary"]  # no FD for shapes
    # audio -> video from real test clips, with the null prompt: scored against the real clips' prompts
    out = tmp_path / "a2v.json"
    assert main(["eval", "--generate", "2", "--dataset", "shapes", "--weights", str(tmp_path / "w"), "--steps", "1",
                 "--mode", "a2v", "--no-prompt", "--device", "cpu", "--json", str(out), "--no-plots"]) == 0
    doc = json.loads(out.read_text())
    real = make_dataset("shapes", split="test", spec=ClipSpec(duration=1.0))
    assert [rec["prompt"] for rec in doc["clips"]] == [real[0].prompt, real[1].prompt]
    assert doc["generate_mode"] == "a2v" and doc["prompt"] is False
    assert main(["eval", "--dataset", "shapes", "--mode", "v2a"]) == 2  # --mode is for --generate


def test_generate_mode_refuses_bad_settings_before_loading_weights(tmp_path, capsys):
    # the weights folder does not exist: the settings are refused first, in one line
    assert main(["eval", "--generate", "2", "--weights", str(tmp_path / "none"), "--sampler", "ddim"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'ddim'" in err and err.count("\n") == 1
