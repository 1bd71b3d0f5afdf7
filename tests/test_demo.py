"""The studio: input checks, uploads, the engine (UI-free), and the served page through gradio_client."""
from __future__ import annotations

import math
import re
import threading

import numpy as np
import pytest

from avgen.data import make_dataset
from avgen.data.clip import ClipSpec
from avgen.data.io import decode_av, write_mp4, write_video, write_wav, to_uint8_rgb
from avgen.demo import inputs
from avgen.api.settings import SETTINGS, SettingError
from avgen.data.prompt import PromptError, Vocabulary
from avgen.demo.inputs import DemoInputError, DemoLimits
from tests.demo_helpers import SPEC, serving, tiny_judges, tiny_weights  # noqa: F401  (fixtures)

DIGITS = tuple("0123456789")


# ----------------------------------------------------------------------------- prompt and settings
def parse_prompt(text, vocab=DIGITS, max_events=3) -> str:
    return Vocabulary(vocab, max_events).parse(text).text


@pytest.mark.parametrize("text, expected", [("3 1 4", "3 1 4"), ("  3   1 4 ", "3 1 4"), ("314", "3 1 4"),
                                            ("3,1", "3 1"), ("", ""), (None, ""), ("7", "7")])
def test_prompts_people_type_become_the_canonical_form(text, expected):
    assert parse_prompt(text) == expected


@pytest.mark.parametrize("text, message", [("3 x 4", "may only hold digits 0-9; 'x'"), ("three", "'t'"),
                                           ("-1", "'-'"), ("1 2 3 4", "at most 3"), ("12345", "5 labels")])
def test_bad_prompts_are_refused_with_a_clear_reason(text, message):
    with pytest.raises(PromptError, match=message):
        parse_prompt(text)


def test_multi_character_labels_are_not_split():
    vocab = ("circle", "square")
    assert parse_prompt("circle square", vocab) == "circle square"
    with pytest.raises(PromptError, match="the labels circle, square; 'circlesquare'"):
        parse_prompt("circlesquare", vocab)


@pytest.mark.parametrize("steps", [0, 201, 2.5, float("nan"), "10", True])
def test_steps_out_of_range_or_not_whole_are_refused(steps):
    with pytest.raises(SettingError, match="steps"):
        SETTINGS["steps"].check(steps)
    assert SETTINGS["steps"].check(None) is None  # the sampler's own default (GenerateSettings.check)


def test_valid_settings_pass_through():
    assert SETTINGS["steps"].check(25.0) == 25 and isinstance(SETTINGS["steps"].check(25.0), int)
    assert SETTINGS["guidance_scale"].check(4) == 4.0
    assert SETTINGS["seed"].check(2 ** 63 - 1) == 2 ** 63 - 1
    for bad in (-1, 2 ** 63, 1.5, None, float("inf")):
        with pytest.raises(SettingError, match="seed"):
            SETTINGS["seed"].check(bad)
    for bad in (-0.1, 20.1, float("nan")):
        with pytest.raises(SettingError, match="audio_guidance_scale must be a number from 0 to 20"):
            SETTINGS["audio_guidance_scale"].check(bad)
    assert SETTINGS["audio_guidance_scale"].check(None) is None  # optional: follows the video's
    assert SETTINGS["guidance_interval"].check((0, 0.8)) == (0.0, 0.8)
    for bad in ((0.9, 0.2), (None, 0.5), (0.0, 1.5)):
        with pytest.raises(SettingError, match="two noise levels lo <= hi between 0 and 1"):
            SETTINGS["guidance_interval"].check(bad)


# ----------------------------------------------------------------------------- uploads
def tone(seconds: float, sr: int = 8000, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (level * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_audio_upload_is_resampled_and_padded_to_the_clip(tmp_path):
    path = write_wav(tone(2.0, sr=16000), 16000, tmp_path / "two seconds.wav")
    audio, notes = inputs.read_audio_upload(path, SPEC, DemoLimits())
    assert audio.shape == (SPEC.num_samples,) and audio.dtype == np.float32
    assert notes == ["the sound lasts 2.0 s: padded with silence to 3 s"]
    assert np.abs(audio[16000:]).max() == 0  # the padding is silence
    # the tone survives resampling 16 kHz -> 8 kHz: same level, same pitch (440 Hz peak)
    body = audio[1000:15000]
    assert abs(np.sqrt(np.mean(body ** 2)) - 0.5 / math.sqrt(2)) < 0.01
    peak_hz = np.argmax(np.abs(np.fft.rfft(body))) * SPEC.sample_rate / len(body)
    assert abs(peak_hz - 440) < 2


def test_audio_upload_keeps_its_samples_at_the_model_rate(tmp_path):
    x = tone(3.0)
    audio, notes = inputs.read_audio_upload(write_wav(x, 8000, tmp_path / "a.wav"), SPEC, DemoLimits())
    assert notes == []
    assert np.abs(audio - x).max() < 1e-3  # 16-bit PCM quantisation only


def test_audio_from_a_video_file_and_longer_sound_is_cut(tmp_path):
    clip = make_dataset("shapes", split="test", spec=ClipSpec(duration=5.0))[0]
    path = write_mp4(clip, tmp_path / "with sound.mp4", scale=1)
    audio, notes = inputs.read_audio_upload(path, SPEC, DemoLimits())
    assert audio.shape == (SPEC.num_samples,)
    assert len(notes) == 1 and re.fullmatch(r"used the first 3 s of the 5\.[01] s sound", notes[0])
    # AAC has encoder delay; the decoder's timing puts it back, so the events stay where they were
    ref = clip.audio[: SPEC.num_samples]
    assert np.corrcoef(audio, ref)[0, 1] > 0.9


@pytest.mark.parametrize("case, message", [
    ("silent", "holds no sound"), ("too long", "longer than 10 s"), ("not media", "not a readable audio"),
    ("no sound track", "has no sound track"), ("missing", "did not arrive"), ("too big", "too big")])
def test_bad_audio_uploads_are_refused(tmp_path, case, message):
    limits = DemoLimits()
    if case == "silent":
        path = write_wav(np.zeros(8000, np.float32), 8000, tmp_path / "quiet.wav")
    elif case == "too long":
        path = write_wav(tone(10.5), 8000, tmp_path / "long.wav")
    elif case == "not media":
        path = tmp_path / "notes.wav"
        path.write_text("this is not a sound")
    elif case == "no sound track":
        frames = np.zeros((16, 32, 32, 3), np.uint8)
        path = write_video(tmp_path / "mute.mp4", frames, 16)
    elif case == "missing":
        path = tmp_path / "gone.wav"
    else:
        limits = DemoLimits(max_upload_mb=1)
        path = write_wav(tone(70.0), 8000, tmp_path / "big.wav")  # 1.1 MB
    with pytest.raises(DemoInputError, match=message):
        inputs.read_audio_upload(path, SPEC, limits)


def test_the_message_names_the_file_not_the_server_path(tmp_path):
    path = write_wav(np.zeros(800, np.float32), 8000, tmp_path / "my recording.wav")
    with pytest.raises(DemoInputError) as e:
        inputs.read_audio_upload(path, SPEC, DemoLimits())
    assert str(e.value).startswith("my recording.wav:") and str(tmp_path) not in str(e.value)


def test_video_upload_is_conformed_to_the_model_and_its_sound_is_not_needed(tmp_path):
    clip = make_dataset("shapes", split="test", spec=SPEC)[1]
    path = write_video(tmp_path / "mute.mp4", to_uint8_rgb(clip.frames.repeat(4, 1).repeat(4, 2)), clip.fps)
    frames, notes = inputs.read_video_upload(path, SPEC, DemoLimits())
    assert frames.shape == (SPEC.num_frames, 32, 32, 1) and notes == []
    assert np.abs(frames - clip.frames).mean() < 0.02  # H.264 at crf 12, then box-downscaled


def test_short_video_is_padded_with_blank_frames(tmp_path):
    clip = make_dataset("shapes", split="test", spec=ClipSpec(duration=2.0))[0]
    clip.frames[:] = np.maximum(clip.frames, 0.5)  # nothing blank in the upload itself
    frames, notes = inputs.read_video_upload(write_mp4(clip, tmp_path / "short.mp4", scale=2), SPEC, DemoLimits())
    assert notes == ["the video lasts 2.0 s: padded with blank frames to 3 s"]
    assert frames[:32].min() > 0.4 and frames[32:].max() == 0


@pytest.mark.parametrize("case, message", [("too long", "longer than the 10 s limit"), ("audio only", "no video")])
def test_bad_video_uploads_are_refused(tmp_path, case, message):
    if case == "too long":
        path = write_video(tmp_path / "long.mp4", np.zeros((16 * 11, 16, 16, 3), np.uint8), 16)
    else:
        path = write_wav(tone(1.0), 8000, tmp_path / "sound.wav")
    with pytest.raises(DemoInputError, match=message):
        inputs.read_video_upload(path, SPEC, DemoLimits())


# ----------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def studio(tiny_weights, tiny_judges, tmp_path_factory):
    from avgen.demo.studio import Studio

    s = Studio(tiny_weights, "cpu", tmp_path_factory.mktemp("studio"), DemoLimits(keep_results=2), tiny_judges)
    s.pipe.set_progress_bar_config(disable=True)
    return s


def settings(**kw):
    from avgen.api.settings import GenerateSettings

    return GenerateSettings(**{"prompt": "3 1 4", "steps": 2, "device": "cpu", **kw})


def test_text_to_av_writes_a_playable_clip_its_sound_a_figure_and_a_report(studio):
    r = studio.run(settings())
    d = decode_av(r.video_path)
    assert d.frames.shape == (48, 256, 256, 3) and d.fps == 16  # upscaled 8x for viewing
    assert abs(len(d.audio) / d.sample_rate - 3.0) < 0.15 and np.abs(d.audio).max() > 0.01
    assert r.audio_path.suffix == ".wav" and r.audio_path.stat().st_size == 44 + 2 * SPEC.num_samples
    assert r.figure_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = r.report  # the eval suite's record of the mp4 the person gets
    assert rep["path"] == str(r.video_path) and rep["prompt"] == "3 1 4"
    assert all(0 <= t <= 3 for t in rep["video_onsets_s"] + rep["audio_onsets_s"])
    assert len(rep["video_digits"]) == len(rep["video_onsets_s"]) and set(rep["video_digits"]) <= set(DIGITS)
    assert rep["video_digit_counts"][1] == max(3, len(rep["video_digits"]))  # scored against the prompt
    assert r.notes == []  # judges were there, the clip needed no fitting
    assert r.settings.prompt == "3 1 4" and r.seconds > 0


def test_same_seed_same_clip_new_seed_new_clip(studio):
    a, b, c = (studio.run(settings(seed=s)).clip for s in (5, 5, 6))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert not np.array_equal(a.frames, c.frames)


def test_bad_input_fails_before_sampling(studio, monkeypatch):
    import avgen.demo.studio as studio_module

    def must_not_run(*a, **k):
        raise AssertionError("sampled despite bad input")
    monkeypatch.setattr(studio_module, "generate", must_not_run)
    for bad, message in ((settings(prompt="3 1 4 1"), "at most 3"), (settings(steps=0), "steps"),
                         (settings(sampler="ddim"), "sampler must be one of"), (settings(mode="a2v"), "add one first"),
                         (settings(mode="t2i"), "mode must be one of"),
                         (settings(guidance_interval=(0.8, 0.3)), "guidance_interval must be two noise levels")):
        with pytest.raises(ValueError, match=message):  # PromptError, SettingError or DemoInputError
            studio.run(bad)


def test_audio_to_video_follows_the_given_sound(studio, tmp_path):
    x = tone(3.0)
    r = studio.run(settings(mode="a2v", prompt=""), upload=write_wav(x, 8000, tmp_path / "voice.wav"))
    assert np.abs(r.clip.audio - x).max() < 1e-3  # held clean: the sound is the upload's
    assert r.clip.frames.shape == (48, 32, 32, 1)


def test_video_to_audio_follows_the_given_picture(studio, tmp_path):
    clip = make_dataset("shapes", split="test", spec=SPEC)[2]
    frames, _ = inputs.read_video_upload(write_mp4(clip, tmp_path / "v.mp4"), SPEC, DemoLimits())
    r = studio.run(settings(mode="v2a"), upload=tmp_path / "v.mp4")
    assert np.array_equal(r.clip.frames, frames)
    assert r.clip.audio.shape == (SPEC.num_samples,)


def test_a_device_this_machine_lacks_is_a_clear_error(studio):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no usable CUDA"):
        studio.run(settings(device="cuda"))


def test_old_results_are_deleted(studio):
    for _ in range(3):
        studio.run(settings())
    assert len(list((studio.workdir / "results").iterdir())) == 2


def test_report_table_and_json_are_safe_for_nan():
    from avgen.demo.studio import report_json as json_safe, report_markdown

    rep = {"av_offset_ms": math.nan, "offset_confidence": 0.0, "onset_f1": math.nan, "video_onsets_s": [],
           "audio_onsets_s": [0.5], "video_digits": [], "audio_digits": ["7"], "prompt": "7",
           "video_digit_counts": [0, 1], "audio_digit_counts": [1, 1], "av_agreement_counts": [0, 1]}
    md = report_markdown(rep, seconds=1.234, notes=["padded"])
    assert "| AV offset (audio late > 0) | n/a ms |" in md and "| sound matches prompt | 100% |" in md
    assert "| picture matches prompt | 0% |" in md and "| digits seen (picture) | none |" in md
    assert "| audio onsets (s) | 0.500 |" in md and "1.23 s" in md and "*padded*" in md
    assert "timeline" not in md
    assert "| timeline asked for (s) | 7 (0.500-0.875) |" in report_markdown({**rep, "timeline_s": [["7", 0.5, 0.875]]})
    assert json_safe(rep)["av_offset_ms"] is None and json_safe(rep)["audio_onsets_s"] == [0.5]
    assert "path" not in json_safe({**rep, "path": "/tmp/server/clip.mp4"})


def test_the_figure_shows_what_was_detected(tmp_path):
    """On a real-looking clip (shapes) the figure carries the detected onsets of both modalities."""
    from avgen.demo.studio import analyse_file, render_figure

    clip = make_dataset("shapes", split="test", spec=SPEC)[3]
    report = analyse_file(write_mp4(clip, tmp_path / "c.mp4"), "", None)
    truth = [e.start_s for e in clip.events]
    assert len(report["video_onsets_s"]) == len(truth) and len(report["audio_onsets_s"]) == len(truth)
    assert np.allclose(report["video_onsets_s"], truth, atol=1 / 16)
    assert report["onset_f1"] == 1.0 and abs(report["av_offset_ms"]) < 20
    png = render_figure(clip, report, tmp_path / "f.png")
    assert png.stat().st_size > 10_000


def test_without_judges_the_studio_still_reports_timing(tiny_weights, tmp_path):
    from avgen.demo.studio import Studio

    s = Studio(tiny_weights, "cpu", tmp_path / "w", judges=tmp_path / "no-judges")
    r = s.run(settings())
    assert "video_digits" not in r.report and math.isfinite(r.report["offset_confidence"])
    assert s.judges_note.startswith("digits are not read: no trained image judge") and r.notes == []


# ----------------------------------------------------------------------------- the served page
@pytest.fixture(scope="module")
def served(tiny_weights, tiny_judges, tmp_path_factory):
    from avgen.demo.app import build_app

    seeds = tmp_path_factory.mktemp("seeds")
    write_preset(seeds)
    app = build_app(tiny_weights, "cpu", seeds_dir=seeds, workdir=tmp_path_factory.mktemp("app"), judges=tiny_judges)
    app.avgen_studio.pipe.set_progress_bar_config(disable=True)
    with serving(app) as url:
        yield app, url


def write_preset(folder):
    from avgen.seeds import SeedPreset, save_preset

    metrics = {"video_digit_accuracy": 1.0, "audio_digit_accuracy": 1.0, "av_agreement": 1.0, "onset_f1": 1.0,
               "abs_offset_ms": 3.0, "offset_confidence": 0.5}
    settings = {"steps": 2, "sampler": "euler", "guidance_scale": 3.0, "audio_guidance_scale": None,
                "modality_scale": 1.0, "guidance_interval": [0.0, 0.75], "postfilter": True}
    return save_preset(SeedPreset("2-7", "2 7", 11, settings, metrics), folder)


def client(url, tmp_path):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(tmp_path))


def call(c, mode="t2av", prompt="3 1 4", seed=0, steps=2, audio=None, video=None, interval=(0.0, 1.0)):
    return c.predict(mode, prompt, seed, steps, 4.0, 4.0, 1.0, "euler", "cpu", audio, video, *interval,
                     api_name="/generate")


def test_gradio_client_generates_a_three_second_clip(served, tmp_path):
    app, url = served
    video, audio, figure, report_md, report = call(client(url, tmp_path))
    d = decode_av(video)
    assert len(d.frames) == 48 and abs(len(d.audio) / d.sample_rate - 3.0) < 0.15
    assert audio.endswith(".wav") and figure.endswith(".png")
    assert "| onset F1 (audio vs video, 1 frame) |" in report_md
    assert report["prompt"] == "3 1 4" and report["video_digit_counts"][1] >= 3
    # the settings that made the clip travel with its report (what a person needs to make it again)
    assert {"prompt": "3 1 4", "seed": 0, "steps": 2, "sampler": "euler", "guidance_interval": [0.0, 1.0]}.items() \
        <= report["settings"].items()


def test_gradio_client_sees_the_input_errors(served, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c = client(url=served[1], tmp_path=tmp_path)
    with pytest.raises(AppError, match="may only hold digits 0-9; 'x'"):
        call(c, prompt="3 x")
    with pytest.raises(AppError, match="500 is greater than maximum value 200"):  # the slider itself refuses it
        call(c, steps=500)
    silent = write_wav(np.zeros(8000, np.float32), 8000, tmp_path / "silence.wav")
    with pytest.raises(AppError, match="silence.wav: holds no sound"):
        call(c, mode="a2v", prompt="", audio=handle_file(str(silent)))


def test_audio_upload_through_the_api(served, tmp_path):
    from gradio_client import handle_file

    voice = write_wav(tone(1.0), 8000, tmp_path / "voice.wav")
    video, audio, *_ = call(client(served[1], tmp_path), mode="a2v", prompt="", audio=handle_file(str(voice)))
    assert len(decode_av(video).frames) == 48


def test_video_upload_through_the_api(served, tmp_path):
    """V2A as a client of the served page does it: the clip that comes back shows the uploaded picture
    unchanged (to one grey level after two H.264 passes) with a new sound of the clip's length."""
    import wave

    from gradio_client import handle_file

    from avgen.data.given import read_given

    clip = make_dataset("shapes", split="test", spec=SPEC)[2]
    given = write_mp4(clip, tmp_path / "given.mp4")
    held, _ = inputs.read_video_upload(given, SPEC, DemoLimits())  # what the studio conditions on
    video, audio, figure, report_md, report = call(client(served[1], tmp_path), mode="v2a", prompt="",
                                                   video=handle_file(str(given)))
    d = decode_av(video)
    assert d.frames.shape == (SPEC.num_frames, 256, 256, 3) and d.fps == SPEC.fps
    assert len(d.audio) == len(decode_av(given).audio)  # as long as a 3-s clip's sound through the same writer
    assert abs(len(d.audio) / d.sample_rate - SPEC.duration) < 0.15
    back, notes = read_given(video, SPEC, "video")
    assert notes == [] and np.abs(back - held).max() <= 1.5 / 255
    other, _ = read_given(write_mp4(make_dataset("shapes", split="test", spec=SPEC)[3], tmp_path / "o.mp4"), SPEC,
                          "video")
    assert np.abs(other - held).mean() > 0.02  # what a picture that was not held would differ by
    with wave.open(audio) as w:  # the sound, as made: 3 s at the model's rate
        assert (w.getframerate(), w.getnframes()) == (SPEC.sample_rate, SPEC.num_samples)
        sound = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32767
    assert np.abs(sound).max() > 0.01 and abs(np.corrcoef(sound, clip.audio)[0, 1]) < 0.5  # new, not the upload's
    assert report["settings"]["mode"] == "v2a" and figure.endswith(".png") and "onset F1" in report_md


def test_several_people_at_once_are_queued_and_all_served(served, tmp_path):
    c = client(served[1], tmp_path)
    jobs = [c.submit("t2av", p, 0, 2, 4.0, 4.0, 1.0, "euler", "cpu", None, None, api_name="/generate")
            for p in ("1", "2 3", "4 5 6")]
    reports = [j.result(timeout=120)[4] for j in jobs]
    assert [r["prompt"] for r in reports] == ["1", "2 3", "4 5 6"]


def test_served_safely(served):
    import os
    import urllib.error
    import urllib.request

    app, url = served
    assert app.server_name == "127.0.0.1"
    # only the results folder, from which Gradio copies each result into its cache (served by keyed hash)
    assert app.allowed_paths == [str(app.avgen_studio.results_dir)]
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and os.environ["HF_HUB_OFFLINE"] == "1"
    assert not app.analytics_enabled and not app.run_history  # run history can sync to the Hub
    assert app.max_file_size == DemoLimits().max_upload_bytes
    assert app._queue.default_concurrency_limit == 1 and app._queue.max_size is not None
    for outside in ("/etc/hostname", str(app.avgen_studio.weights / "model_index.json")):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}gradio_api/file={outside}")
        assert e.value.code == 403


def test_examples_come_from_the_seeds_folder(served):
    from avgen.demo.app import EXAMPLE_FIELDS

    app, _ = served
    datasets = [c for c in app.config["components"] if c["type"] == "dataset"]
    assert len(datasets) == 1
    samples = datasets[0]["props"]["samples"]
    assert len(samples) == 1 and len(samples[0]) == len(EXAMPLE_FIELDS)
    assert samples[0][:4] == ["t2av", "2 7", 11, 2] and samples[0][7] == "euler" and samples[0][8:] == [0.0, 0.75, True]


def test_the_postfilter_checkbox_is_off_and_locked_for_weights_without_one(served):
    app, _ = served  # the tiny weights carry no postfilter
    box = [c for c in app.config["components"] if c.get("props", {}).get("elem_id") == "postfilter"]
    assert len(box) == 1 and box[0]["props"]["value"] is False and box[0]["props"]["interactive"] is False


def test_only_one_generation_runs_at_a_time(studio, monkeypatch):
    """The engine's own lock: API callers that bypass the queue still never sample concurrently."""
    active, worst = [0], [0]
    sample = type(studio.pipe).__call__

    def counting(self, *a, **k):
        active[0] += 1
        worst[0] = max(worst[0], active[0])
        try:
            return sample(self, *a, **k)
        finally:
            active[0] -= 1
    monkeypatch.setattr(type(studio.pipe), "__call__", counting)
    errors = []

    def request(seed):
        try:
            studio.run(settings(seed=seed))
        except Exception as e:  # a worker thread's exception would otherwise only be logged
            errors.append(e)
    threads = [threading.Thread(target=request, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert worst[0] == 1 and active[0] == 0
    assert errors == []  # 3 requests, keep_results=2: no request lost its folder to another's pruning


def test_a_result_still_being_shown_is_not_pruned(studio):
    """Pruning spares a folder whose clip is written but not yet inspected (the page is showing the
    clip while the report is measured), however many requests finish meanwhile; it goes once done."""
    import gc

    results = studio.workdir / "results"
    held = studio.make(settings(seed=11))
    for i in range(3):  # keep_results=2: without the guard `held` would be deleted here
        studio.run(settings(seed=20 + i))
    assert held.video_path.exists() and held.audio_path.exists()
    studio.inspect(held)
    assert held.figure_path.exists() and held.report["prompt"] == "3 1 4"
    assert not held.release.alive  # released once, by inspect: garbage collection has nothing left to do
    studio.run(settings(seed=30))
    assert not held.video_path.parent.exists() and len(list(results.iterdir())) == 2

    dropped = studio.make(settings(seed=12))  # made, never inspected: released when the caller drops it
    folder = dropped.video_path.parent
    del dropped
    gc.collect()
    for i in range(2):  # two newer results push it out of the 2 kept
        studio.run(settings(seed=31 + i))
    assert not folder.exists() and len(list(results.iterdir())) == 2

    # a dropped result's finaliser can run (garbage collection) on a thread that is pruning: it must
    # not wait for the lock that thread holds
    done = threading.Event()

    def release_while_pruning():
        with studio._folders:
            studio._release(folder)
        done.set()
    worker = threading.Thread(target=release_while_pruning, daemon=True)
    worker.start()
    worker.join(5)
    assert done.is_set()


def test_a_failed_write_releases_its_folder(studio, monkeypatch):
    """A request whose mp4 cannot be written fails with the writer's error, and its folder is not
    left live: pruning may take it like any finished one."""
    import avgen.demo.studio as studio_module

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(studio_module, "write_mp4", full_disk)
    with pytest.raises(OSError, match="No space left"):
        studio.make(settings())
    assert studio._live == set()


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["avgen demo", "demos/app.py"])
def test_the_commands_serve_the_page_on_loopback(entry, tiny_weights, tmp_path):
    """`avgen demo` and `python demos/app.py` as a person starts them (a subprocess), until the page answers."""
    from tests.demo_helpers import free_port, start_studio, wait_for_page

    port = free_port()
    proc, temp, log = start_studio(entry, ["--weights", str(tiny_weights), "--port", str(port), "--seeds",
                                           str(tmp_path)], tmp_path)
    try:
        html = wait_for_page(proc, port, 120)
        assert "avgen studio" in html, log.read_text() if proc.poll() is not None else "no answer in 120 s"
        assert [p.name for p in temp.glob("avgen-demo-*")], "the studio made no temp folder where TMPDIR says"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # stopped as a service manager stops it (SIGTERM), it leaves no temp folder behind
    assert proc.returncode == 143 and not list(temp.glob("avgen-demo-*")), (proc.returncode, list(temp.iterdir()))


def test_stop_ends_the_sampling_in_flight_and_refuses_new_requests(tiny_weights, tiny_judges, tmp_path):
    """`Studio.stop` (process shutdown): the request being sampled ends at its next step with
    StudioStopped, `stop` returns once no request is inside the studio, and later requests are refused."""
    import threading

    from avgen.demo.studio import Studio, StudioStopped

    s = Studio(tiny_weights, "cpu", tmp_path / "studio", DemoLimits(), tiny_judges)
    s.pipe.set_progress_bar_config(disable=True)
    sampling, go, outcome, stopped = threading.Event(), threading.Event(), [], []

    def progress(fraction, desc):
        if desc.startswith("sampling: 1/"):  # hold the request inside its first step until told
            sampling.set()
            go.wait(30)

    def request():
        try:
            s.make(settings(steps=50), progress=progress)
            outcome.append("finished")
        except StudioStopped as e:
            outcome.append(e)

    worker = threading.Thread(target=request)
    worker.start()
    assert sampling.wait(60)
    stopper = threading.Thread(target=lambda: stopped.append(s.stop(timeout=30)))
    stopper.start()
    stopper.join(0.5)
    assert stopper.is_alive()  # it waits for the request in flight
    go.set()
    worker.join(30)
    stopper.join(30)
    assert stopped == [True] and len(outcome) == 1 and isinstance(outcome[0], StudioStopped)
    assert s._busy == 0 and s._live == set()
    with pytest.raises(StudioStopped, match="shutting down"):
        s.make(settings())


@pytest.mark.slow
def test_sigterm_while_a_clip_is_sampled_exits_cleanly(tmp_path):
    """`kill` (SIGTERM) while the studio samples a clip (the shipped weights, 100 steps: seconds here):
    the process ends with 143 through its exit handlers and leaves no temp folder. Before `Studio.stop`
    it aborted (SIGABRT, "terminate called without an active exception") from the request's thread."""
    import time

    from gradio_client import Client

    from tests.demo_helpers import free_port, start_studio, wait_for_page

    port = free_port()
    proc, temp, log = start_studio("avgen demo", ["--port", str(port), "--seeds", str(tmp_path)], tmp_path)
    try:
        assert wait_for_page(proc, port, 180), log.read_text()[-2000:]
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]
        kw = {p["parameter_name"]: p.get("parameter_default") for p in params}
        job = client.submit(api_name="/generate", **{**kw, "mode": "t2av", "prompt": "3 1 4", "steps": 100})
        deadline = time.monotonic() + 120
        while "/100 [" not in log.read_text():  # the sampler's progress bar has started: the request is sampling
            if job.done() or proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("no sampling progress line for the request (SIGTERM would test an idle studio): "
                            f"job done: {job.done()}, studio exit code: {proc.poll()}, waited up to 120 s; log: "
                            f"{log.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.5)
        assert not job.done(), "the clip finished before it could be interrupted"
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert proc.returncode == 143 and "terminate called" not in out, (proc.returncode, out[-2000:])
    assert "100/100 [" not in out, out[-2000:]  # SIGTERM came while sampling: its last step was never taken
    assert not list(temp.glob("avgen-demo-*")), list(temp.iterdir())


def test_a_stream_hands_out_contiguous_chunks_then_the_whole_clip(studio):
    from pathlib import Path

    from avgen.data.io import decode_av

    items = list(studio.stream(settings(prompt="3 1 4 1", steps=2), 7.0))
    chunks, path = items[:-1], items[-1]
    assert isinstance(path, Path) and path.suffix == ".mp4"
    assert chunks[0].start_s == 0 and len(chunks[0].frames) == 48
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_s == pytest.approx(a.start_s + a.seconds) and b.made_s >= a.made_s
        assert len(b.audio) == len(b.frames) * studio.spec.samples_per_frame
    assert sum(c.seconds for c in chunks) == pytest.approx(7.0)
    assert decode_av(path).duration == pytest.approx(7.0, abs=0.1)
    with pytest.raises(ValueError, match="at most 4"):  # 2/3 of 3 labels per 3 s
        next(studio.stream(settings(prompt="1 2 3 4 5", steps=2), 7.0))


def test_an_edit_keeps_the_spans_of_the_uploaded_clip_and_remakes_the_rest(studio, tmp_path):
    from avgen.data.io import decode_av, write_mp4
    from avgen.demo.inputs import DemoInputError

    src = studio.run(settings(prompt="3 1 4", steps=2, seed=1))
    source = write_mp4(src.clip, tmp_path / "source.mp4")
    r = studio.make(settings(prompt="7", steps=2, seed=4), upload=source, keep="0:1,2:3")
    a, b = decode_av(source).frames.astype(float), decode_av(r.video_path).frames.astype(float)
    fps = studio.spec.fps
    assert np.abs(a[:fps] - b[:fps]).mean() < 2 and np.abs(a[2 * fps:] - b[2 * fps:]).mean() < 2  # codec noise only
    assert np.abs(a[fps:2 * fps] - b[fps:2 * fps]).mean() > 2
    with pytest.raises(DemoInputError, match="upload the video"):
        studio.make(settings(prompt="7"), keep="0:1")
    with pytest.raises(ValueError, match="START:END"):
        studio.make(settings(prompt="7"), upload=source, keep="first second")
