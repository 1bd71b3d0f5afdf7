"""The avgen studio: a Gradio page over `Studio` (see studio.py for what happens to a request).

    app = build_app(weights="weights/avgen", device="auto")   # loads the weights once
    launch(app, host="127.0.0.1", port=7860)                   # or: avgen demo / python demos/app.py

Privacy and safety defaults: Gradio analytics and Hugging Face Hub access are off (see
`avgen/demo/__init__.py`); the server binds 127.0.0.1 unless told otherwise; the files it can serve
are confined to its own temp folder; uploads are limited in size (by Gradio) and in duration (by
the studio); a queue serves several people one generation at a time.
"""
from __future__ import annotations

import atexit
import json
import os
import random
import re
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from avgen.api.settings import SETTINGS, GenerateSettings
from avgen.demo.guard import StudioBlocks, UploadQuota
from avgen.demo.inputs import DemoLimits
from avgen.demo.player import PLAYER_HTML, PLAYER_JS, payload
from avgen.demo.studio import DEVICE_CHOICES, Studio, StudioStopped, report_json, report_markdown
from avgen.model.config import default_interval
from avgen.seeds import DEFAULT_SEEDS_DIR, SeedPreset, load_presets

MODES = [("text → audio + video", "t2av"), ("audio → video", "a2v"), ("video → audio", "v2a"),
         ("edit a clip", "edit")]  # edit: keep spans of an uploaded clip's picture and sound, remake the rest
# The player's controls stay visible (Gradio shows them only while the pointer is over the video, so a
# finished clip looked like a still picture with nothing to press).
POSTER_JS = """(report) => {
    const v = document.querySelector('#result-video video');
    const events = report && report.video_events_s;
    if (v && events && events.length) {
        const seek = () => { v.currentTime = (events[0][0] + events[0][1]) / 2; };
        if (v.readyState >= 1) seek(); else v.addEventListener('loadedmetadata', seek, {once: true});
    }
    return [];
}"""
CSS = """
#result-video .controls { opacity: 1 !important; }
#stream-chunk { display: none !important; }
"""
STREAM_SECONDS = 30.0  # the stream's default length: ten of the model's clips
STUDIO_SAMPLER = "euler"  # the page's starting sampler
MAX_QUEUE = 32
CACHE_S = 3600  # Gradio's cache keeps uploads and served results this long; the upload quota's window  # people waiting beyond this are told the studio is busy instead of waiting for minutes
INTRO = """# avgen studio
One diffusion model makes a short video **and** its soundtrack together. Type up to {max_events} digits
(`3 1 4`): each digit appears on screen exactly while a voice says it. Leave the prompt empty for an
unconditional clip, or let the picture follow a sound you upload or record (audio → video), or the
sound follow a video (video → audio). Same seed and settings, same clip. **Stream** makes a clip of
up to a minute (up to {max_long} digits in 30 s) and plays it while the rest is made."""


def build_app(weights=None, device: str = "auto", limits: DemoLimits = DemoLimits(), seeds_dir=DEFAULT_SEEDS_DIR,
              workdir=None, warm_up: bool = True, judges=None, sampler: str | None = None) -> gr.Blocks:
    """The studio page, with the model (and the eval suite's judges) loaded once, here, and a queue.
    Serve it with `launch()`. `judges`: a judges folder (default: the shipped weights/judges).
    `sampler`: the page's starting sampler (default: STUDIO_SAMPLER when the weights can run it)."""
    workdir = Path(workdir) if workdir else _temp_workdir()
    confine_gradio_files(workdir)
    studio = Studio(weights, device, workdir / "studio", limits, judges)
    studio.sampler = sampler or (STUDIO_SAMPLER if STUDIO_SAMPLER in studio.samplers else GenerateSettings().sampler)
    if warm_up:
        studio.warm_up()
    presets = load_presets(seeds_dir)
    with StudioBlocks(title="avgen studio", analytics_enabled=False, delete_cache=(600, CACHE_S)) as app:
        gr.Markdown(INTRO.format(max_events=studio.max_events,
                                 max_long=studio.pipe.vocabulary_for(STREAM_SECONDS).max_events))
        if studio.judges_note:
            gr.Markdown(f"**Note:** {studio.judges_note}")
        with gr.Row():
            with gr.Column(scale=2):
                ins = _inputs(studio, device)
            with gr.Column(scale=3):
                outs = _outputs()
        fitting = [p for p in presets if fits(studio, p.prompt)]  # the shipped seeds, for the shipped vocabulary
        if fitting:
            _examples(fitting, ins)
        else:  # other weights (a user's folder): the prompts of their own training data
            _prompt_examples(studio.pipe.transformer.config.get("example_prompts") or [], ins)
        _wire(studio, ins, outs)
        app.check_inputs("generate", API_NAMES)  # a malformed API call is refused naming the input (guard.py)
        app.check_inputs("stream", STREAM_INPUTS)
    app.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    app.avgen_studio, app.avgen_workdir = studio, workdir  # read by launch() and by tests
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    """Serve a `build_app` page: files confined to its temp folder, uploads capped in size, no run
    history (its page offers to sync runs to a Hugging Face bucket) and no monitoring dashboard.
    While it serves, SIGTERM (`kill`, a service manager's stop) ends the process as Ctrl+C does, through
    the exit handlers, so the temp folder with every clip made goes too (by default SIGTERM skips them).
    Either way a clip being sampled is dropped at its next step, and the process waits for the request
    threads to leave the studio before it exits (`Studio.stop`)."""
    limits = app.avgen_studio.limits
    previous = _exit_on_sigterm()
    try:
        quota = Middleware(UploadQuota, max_files=limits.quota_files, max_bytes=limits.quota_mb * 2 ** 20,
                           per_file=limits.max_upload_bytes, window_s=CACHE_S)
        # the results folder is allowed only so that Gradio may copy each result into its cache, from where
        # it is served (under a keyed hash); the folder's own names are random and never sent to anyone
        return app.launch(server_name=host, server_port=port, share=share,
                          allowed_paths=[str(app.avgen_studio.results_dir)],
                          max_file_size=f"{limits.max_upload_mb}mb", show_error=True, ssr_mode=False,
                          run_history=False, enable_monitoring=False, css=CSS, js=PLAYER_JS,
                          app_kwargs={"middleware": [quota]}, **kwargs)
    finally:
        if not kwargs.get("prevent_thread_lock"):  # the call served until it was stopped: this is shutdown
            app.avgen_studio.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm():
    """SIGTERM -> SystemExit(143) in the main thread; returns the handler it replaced (None when it
    cannot install one: not the main thread, or someone else's handler is already there)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return None

    def stop(signum, frame):
        # once: a second SIGTERM (`make demo` passes its own on to the studio) must not cut short the
        # shutdown it started (`launch` restores the old handler when the studio is idle)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    return previous


def confine_gradio_files(workdir: Path) -> None:
    """Gradio's upload folder and example cache inside our own temp folder, so everything the page
    serves lives there (Gradio reads these at component creation: call before building the page)."""
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(workdir / "examples")


def _temp_workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="avgen-demo-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# ----------------------------------------------------------------------------- the page
def _slider(name: str, value, label: str, step: float, **kw) -> gr.Slider:
    """A slider over one setting's limits in the settings table (the command line's, too)."""
    s = SETTINGS[name]
    return gr.Slider(s.lo, s.hi, value=value, step=step, label=label, info=s.help, **kw)


def _inputs(studio: Studio, device: str) -> dict:
    d, lim = GenerateSettings(sampler=studio.sampler).check(), studio.limits
    ins = {"mode": gr.Radio(MODES, value="t2av", label="mode")}
    ins["prompt"] = gr.Textbox(label="prompt", placeholder="3 1 4", max_lines=1, elem_id="prompt",
                               info=f"{studio.pipe.vocabulary.describe()}, at most {studio.max_events}, separated "
                                    "by spaces or commas; empty = unconditional")
    ins["audio"] = gr.Audio(sources=["upload", "microphone"], type="filepath", visible=False,
                            label=f"sound for the picture to follow (at most {lim.max_upload_s:g} s)")
    ins["video"] = gr.Video(sources=["upload"], visible=False,
                            label=f"video for the sound to follow, or the clip to edit (at most {lim.max_upload_s:g} s)")
    ins["keep"] = gr.Textbox("", label="keep", placeholder="0:1,2:3", max_lines=1, visible=False, elem_id="keep",
                             info="the spans of the clip to keep, START:END in seconds; the prompt's digits "
                                  "are made in the rest, in picture and sound")
    with gr.Row(equal_height=True):
        ins["seed"] = gr.Number(value=d.seed, precision=0, minimum=SETTINGS["seed"].lo, label="seed", scale=4,
                                elem_id="seed")
        ins["dice"] = gr.Button("🎲 roll", scale=1, min_width=64, elem_id="dice")
    with gr.Accordion("settings", open=False):
        ins["steps"] = _slider("steps", d.steps, "steps", 1, elem_id="steps")
        ins["guidance"] = _slider("guidance_scale", d.guidance_scale, "video guidance", 0.1)
        audio_default = d.guidance_scale if d.audio_guidance_scale is None else d.audio_guidance_scale
        ins["audio_guidance"] = _slider("audio_guidance_scale", audio_default, "audio guidance", 0.1)
        ins["modality"] = _slider("modality_scale", d.modality_scale, "modality scale", 0.1)
        with gr.Row():
            lo, hi = default_interval(given=False)
            ins["guide_lo"] = gr.Slider(0.0, 1.0, value=lo, step=0.05,
                                        label="guidance acts from noise level")
            ins["guide_hi"] = gr.Slider(0.0, 1.0, value=hi, step=0.05,
                                        label="... up to noise level (1 = pure noise)")
        ins["sampler"] = gr.Dropdown(list(studio.samplers), value=d.sampler, label="sampler",
                                     info=SETTINGS["sampler"].help, elem_id="sampler")
        has_postfilter = studio.pipe.postfilter is not None
        ins["postfilter"] = gr.Checkbox(value=d.postfilter and has_postfilter, interactive=has_postfilter,
                                        label="spectral-detail postfilter", elem_id="postfilter",
                                        info="gives the voice back the fine structure the model smooths away; "
                                        "off = the sound as the model drew it" if has_postfilter else
                                        "these weights have none (fit one: avgen postfilter --weights DIR)")
        ins["device"] = gr.Radio(list(DEVICE_CHOICES), value=device, label="device")
    ins["run"] = gr.Button("Generate", variant="primary", elem_id="generate")
    with gr.Row(equal_height=True):
        ins["stream_seconds"] = _slider("duration", STREAM_SECONDS, "stream length (s)", 1, elem_id="stream-seconds",
                                        scale=3)
        ins["stream"] = gr.Button("Stream", elem_id="stream", scale=1)
    return ins


def _outputs() -> dict:
    outs = {"video": gr.Video(label="clip with sound", elem_id="result-video", buttons=["download"], height=320),
            "audio": gr.Audio(label="sound alone", type="filepath", elem_id="result-audio"),
            # the figure carries its own title; Gradio's label chip would cover it
            "figure": gr.Image(label="frames over the spectrogram, detected events of both modalities",
                               show_label=False, type="filepath", elem_id="figure"),
            "report": gr.Markdown(elem_id="report")}
    outs["player"] = gr.HTML(PLAYER_HTML, label="stream", elem_id="stream-player-box")
    outs["chunk"] = gr.Textbox(elem_id="stream-chunk", show_label=False, container=False)  # hidden: the player reads it
    with gr.Accordion("raw report (JSON)", open=False):
        outs["json"] = gr.JSON(label="sync report")
    return outs


EXAMPLE_FIELDS = ("mode", "prompt", "seed", "steps", "guidance", "audio_guidance", "modality", "sampler",
                  "guide_lo", "guide_hi", "postfilter")


def example_row(p: SeedPreset) -> list:
    """A preset as the values of the EXAMPLE_FIELDS inputs."""
    s = p.settings
    audio_g = s["guidance_scale"] if s["audio_guidance_scale"] is None else s["audio_guidance_scale"]
    lo, hi = s["guidance_interval"]
    return ["t2av", p.prompt, p.seed, s["steps"], s["guidance_scale"], audio_g, s["modality_scale"], s["sampler"],
            lo, hi, s["postfilter"]]


def example_label(p: SeedPreset) -> str:
    """What a preset's button says: its prompt and seed, and whether its recorded clip met the bar."""
    return f"{p.prompt}  (seed {p.seed}{', below the bar' if p.bar_failures() else ''})"


def fits(studio: Studio, prompt: str) -> bool:
    """Whether the loaded model reads `prompt` (the seeds in seeds/ are for the shipped digits)."""
    try:
        studio.pipe.vocabulary.parse(prompt)
    except ValueError:
        return False
    return True


def _prompt_examples(prompts: list[str], ins: dict) -> None:
    d = GenerateSettings()
    if prompts:
        gr.Examples([[p, d.seed] for p in prompts], [ins["prompt"], ins["seed"]],
                    label="prompts from the data these weights were trained on (click one, then Generate)",
                    cache_examples=False)


def _examples(presets: list[SeedPreset], ins: dict) -> None:
    gr.Examples([example_row(p) for p in presets], [ins[k] for k in EXAMPLE_FIELDS],
                label="curated seeds from seeds/ (click one, then Generate)",
                example_labels=[example_label(p) for p in presets], cache_examples=False)


# ----------------------------------------------------------------------------- events
GENERATE_INPUTS = ("mode", "prompt", "seed", "steps", "guidance", "audio_guidance", "modality", "sampler",
                   "device", "audio", "video", "guide_lo", "guide_hi", "postfilter", "keep")
API_NAMES = GENERATE_INPUTS  # the /generate endpoint's parameters, as its API page and its refusals name them
STREAM_INPUTS = ("prompt", "seed", "steps", "sampler", "stream_seconds", "postfilter")


def _wire(studio: Studio, ins: dict, outs: dict) -> None:
    ins["mode"].change(show_upload, ins["mode"], [ins["audio"], ins["video"], ins["guide_lo"], ins["guide_hi"], ins["keep"]],
                       api_visibility="private")
    ins["dice"].click(roll_seed, None, ins["seed"], api_visibility="private")
    results = [outs[k] for k in ("video", "audio", "figure", "report", "json")]
    handler = make_handler(studio)
    event = ins["run"].click(handler, [ins[k] for k in GENERATE_INPUTS], results, api_name="generate")
    # the player rests on the middle of the first event the picture shows, not on the clip's first frame
    # (blank until the first event): in the browser only, so API callers get plain outputs
    event.success(None, outs["json"], None, js=POSTER_JS)
    # a refused or failed request: its reason stays on the page where the clip would be (the toast fades),
    # and the outputs show nothing instead of an unexplained "Error" badge each
    event.failure(handler.explain_failure, None, results, api_visibility="private")
    # the fast sampler takes its own step count; back from it, the others' default
    ins["sampler"].change(steps_for_sampler, [ins["sampler"], ins["steps"]], ins["steps"], api_visibility="private")
    # Stream: the player starts (its audio clock, in the click's user gesture), then chunks arrive in the
    # hidden box one by one and the player queues each (player.py)
    ins["stream"].click(None, None, None, js="() => { window.avgenStream.start(); return []; }",
                        api_visibility="private")
    ins["stream"].click(make_stream_handler(studio), [ins[k] for k in STREAM_INPUTS], [outs["chunk"], outs["video"]],
                        api_name="stream")
    outs["chunk"].change(None, outs["chunk"], None, js="(c) => { if (c) window.avgenStream.push(JSON.parse(c)); return []; }",
                         api_visibility="private")


def steps_for_sampler(sampler: str, steps):
    d = GenerateSettings().check().steps
    if sampler == "fast":
        return GenerateSettings(sampler="fast").check().steps
    return d if steps is not None and steps <= GenerateSettings(sampler="fast").check().steps else steps


def make_stream_handler(studio: Studio):
    """The Stream button (and the `/stream` API): chunk after chunk as JSON for the page's player, then
    the whole clip as an mp4 in the result player."""
    def stream_clip(prompt, seed, steps, sampler, seconds, postfilter=True):
        settings = GenerateSettings(prompt=prompt or "", seed=seed, steps=steps, sampler=sampler, postfilter=postfilter)
        sid = secrets.token_hex(8)  # the player plays this stream's chunks alone
        try:
            for item in studio.stream(settings, seconds):
                if isinstance(item, Path):
                    yield json.dumps({"stream": sid, "end": True}), str(item)
                else:
                    yield json.dumps(payload(item, sid)), gr.update()
        except (ValueError, StudioStopped) as e:
            raise gr.Error(str(e), print_exception=False) from None
    return stream_clip


def show_upload(mode: str):
    """The upload box of the mode, and the mode's default guidance interval."""
    lo, hi = default_interval(given=mode in ("a2v", "v2a"))
    return (gr.update(visible=mode == "a2v"), gr.update(visible=mode in ("v2a", "edit")), lo, hi,
            gr.update(visible=mode == "edit"))


def roll_seed() -> int:
    # deliberately not reproducible: the dice is the way to explore
    return random.SystemRandom().randrange(0, 2 ** 31)


def make_handler(studio: Studio):
    """The Generate button (and the `/generate` API): inputs -> mp4, wav, figure, report, report JSON.

    A generator: the clip goes to the page as soon as it is written, the sync report and the
    figure follow when measured (API callers get the final, complete outputs)."""
    failures: dict[str, str] = {}  # session -> why its last request failed (read once by explain_failure)

    def refuse(request: gr.Request | None, message: str) -> gr.Error:
        if request is not None:
            failures[request.session_hash] = message
            while len(failures) > 1000:  # sessions that never asked again
                failures.pop(next(iter(failures)))
        return gr.Error(message, print_exception=False)

    def explain_failure(request: gr.Request):
        why = failures.pop(request.session_hash, "the request failed") if request is not None else "the request failed"
        return None, None, None, f"**No clip:** {markdown_text(why)}", None

    def generate(mode, prompt, seed, steps, guidance, audio_guidance, modality, sampler, device, audio, video,
                 guide_lo=None, guide_hi=None, postfilter=True, keep="", progress=gr.Progress(),
                 request: gr.Request = None):
        interval = None if guide_lo is None or guide_hi is None else (guide_lo, guide_hi)  # None: the mode's default
        edit = mode == "edit"
        settings = GenerateSettings(prompt=prompt or "", seed=seed, steps=steps, sampler=sampler,
                                    guidance_scale=guidance, audio_guidance_scale=audio_guidance,
                                    modality_scale=modality, guidance_interval=interval, device=device,
                                    mode="t2av" if edit else mode, postfilter=postfilter)
        upload = {"a2v": audio, "v2a": video, "edit": video}.get(mode)
        say = lambda fraction, desc: progress(fraction, desc=desc)  # noqa: E731
        try:
            r = studio.make(settings, upload, progress=say, keep=(keep or "") if edit else None)
        except (ValueError, StudioStopped) as e:  # the library's checks (the person can fix these: prompt,
            raise refuse(request, str(e)) from None  # settings, upload), or the studio going down
        for note in r.notes:
            gr.Info(note)
        yield str(r.video_path), str(r.audio_path), None, "*measuring sync...*", None
        try:
            r = studio.inspect(r, progress=say)
        except StudioStopped as e:  # the clip is on the page; the report will not come
            raise refuse(request, str(e)) from None
        yield (str(r.video_path), str(r.audio_path), str(r.figure_path), report_markdown(r.report, r.seconds, r.notes),
               report_json(r.report, r.settings))

    generate.explain_failure = explain_failure
    return generate


def markdown_text(text: str) -> str:
    """`text` shown as itself in Markdown (no emphasis from the underscores of `guidance_scale`)."""
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", text)

