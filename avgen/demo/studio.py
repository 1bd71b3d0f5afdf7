"""The studio's engine, without any UI: weights loaded once, a request checked, a clip generated
through the same library function as `avgen generate`, then written (mp4, wav), analysed by the
eval suite (sync report) and drawn (frame strip over the spectrogram with detected events).

The Gradio page (`app.py`) is a thin layer over `Studio.run`; tests drive `Studio` directly too.
"""
from __future__ import annotations

import math
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from avgen.api.generate import Edit, generate
from avgen.api.settings import SETTINGS, GenerateSettings, parse_spans
from avgen.api.stream import as_clip, stream
from avgen.data.clip import Clip
from avgen.data.io import write_mp4, write_wav
from avgen.data.preview import render_sheet
from avgen.demo import inputs
from avgen.demo.inputs import DemoInputError, DemoLimits
from avgen.eval.judges import Judges
from avgen.eval.suite import EvalConfig, analyse, judge_can_read, load_signal
from avgen.model.config import DEFAULT_WEIGHTS
from avgen.model.device import resolve_device
from avgen.model.pipeline import load_pipeline
from avgen.model.sampler import SAMPLERS
from avgen.seeds import metrics_from_record
from avgen.util import json_safe as strict

DEVICE_CHOICES = SETTINGS["device"].choices

Progress = Callable[[float, str], None]  # (fraction done, what is happening)


def _silent(fraction: float, desc: str) -> None:
    pass


class StudioStopped(RuntimeError):
    """The studio is shutting down: the request was dropped (a sampling in flight ends at its next step)."""


@dataclass
class StudioResult:
    clip: Clip
    video_path: Path  # mp4 with sound, upscaled for viewing
    audio_path: Path  # the sound alone (wav)
    settings: GenerateSettings  # what made the clip
    notes: list[str] = field(default_factory=list)  # how uploads were fitted, for the person
    seconds: float = 0.0  # generation time (sampling + decoding), what the person waited for
    # filled in by Studio.inspect, after the clip is already on the page:
    report: dict | None = None  # the eval suite's per-clip record of the mp4 (offset, onsets, F1, digits)
    figure_path: Path | None = None  # PNG: frame strip over the spectrogram, detected events of both modalities
    # lets the studio prune the result's folder; called once, by `inspect` or when the result is dropped
    release: Callable[[], object] | None = field(default=None, repr=False, compare=False)


class Studio:
    """One loaded model serving many requests, one at a time (the pipeline holds sampler and device
    state, and two concurrent samplings on two cores would only slow each other down)."""

    def __init__(self, weights=None, device: str = "auto", workdir=None, limits: DemoLimits = DemoLimits(),
                 judges=None):
        self.weights = Path(weights or DEFAULT_WEIGHTS)
        self.limits = limits
        self.default_device = SETTINGS["device"].check(device)
        self.pipe = load_pipeline(self.weights, device)  # the one load: requests only move it between devices
        self.sampler = GenerateSettings().sampler  # the page's starting sampler (build_app sets it)
        self.judges, self.judges_note = load_judges(judges)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="avgen-studio-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._made: list[Path] = []  # result folders, oldest first (their names are random)
        # guards `_live` and the pruning; re-entrant, because a dropped result's finaliser may run
        # (garbage collection) on a thread that is pruning
        self._folders = threading.RLock()
        self._live: set[Path] = set()  # result folders still being written or inspected: never pruned
        # shutdown (`stop`): requests refused from then on, the sampling in flight ended at its next step
        self._stopping = threading.Event()
        self._idle = threading.Condition()  # guards `_busy`: requests inside `make` or `inspect`
        self._busy = 0

    # ------------------------------------------------------------------ the model's facts
    @property
    def spec(self):
        return self.pipe.codec.spec

    @property
    def vocab(self) -> tuple[str, ...]:
        return self.pipe.vocab

    @property
    def max_events(self) -> int:
        return int(self.pipe.transformer.config.max_events)

    @property
    def results_dir(self) -> Path:
        """Where results are written (each in its own randomly named folder, see `_result_dir`)."""
        return self.workdir / "results"

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers these weights can run (fast needs a distilled student)."""
        return tuple(s for s in SAMPLERS if s != "fast" or self.pipe.student is not None)

    # ------------------------------------------------------------------ requests
    def check(self, settings: GenerateSettings, upload=None, keep: str | None = None) -> tuple[GenerateSettings, dict, list[str]]:
        """Validate a request -> (normalised GenerateSettings, what `generate` is given: {audio|video: array}
        or {edit: Edit}, notes).

        The prompt is read by the model's vocabulary and the settings checked against the settings table,
        as `avgen generate` does: every problem a person can fix raises a ValueError (PromptError,
        SettingError, DemoInputError) with one sentence, before any sampling starts. `keep` (spans such
        as "0:1,2:3"): an edit of the uploaded video, its picture and sound kept there, the rest remade.
        """
        lim = self.limits
        prompt = self.pipe.vocabulary.parse(settings.prompt)
        settings = settings.replace(prompt=prompt.text, num_clips=1, duration=None).check()
        mode = settings.mode
        if keep is not None:
            if upload is None:
                raise DemoInputError("an edit keeps parts of a clip: upload the video (with its sound) first")
            spans = parse_spans(keep)
            frames, n1 = inputs.read_video_upload(upload, self.spec, lim)
            audio, n2 = inputs.read_audio_upload(upload, self.spec, lim)
            return settings.replace(mode="t2av").check(), {"edit": Edit(frames, audio, spans)}, n1 + n2
        if mode == "t2av":
            return settings, {}, []
        if upload is None:
            what = "a sound (upload or record one)" if mode == "a2v" else "a video"
            raise DemoInputError(f"this mode follows {what}: add one first")
        if mode == "a2v":
            audio, notes = inputs.read_audio_upload(upload, self.spec, lim)
            return settings, {"audio": audio}, notes
        frames, notes = inputs.read_video_upload(upload, self.spec, lim)
        return settings, {"video": frames}, notes

    def run(self, settings, upload=None, progress: Progress | None = None) -> StudioResult:
        """Check, generate, write, analyse, draw. Raises DemoInputError for input a person can fix."""
        return self.inspect(self.make(settings, upload, progress), progress)

    def make(self, settings, upload=None, progress: Progress | None = None, keep: str | None = None) -> StudioResult:
        """Check, generate, write the mp4 and the wav: what the person waits for."""
        say = progress or _silent

        def on_step(i: int, n: int) -> None:
            if self._stopping.is_set():
                raise StudioStopped("the studio is shutting down: this clip was not finished")
            say(0.05 + 0.75 * i / n, f"sampling: {i}/{n} steps")

        with self._working():
            say(0.0, "checking the request")
            settings, given, notes = self.check(settings, upload, keep)
            with self._lock:
                self._move_to(settings.device)
                say(0.05, "sampling")
                t0 = time.perf_counter()
                clip = generate(self.pipe, settings, **given, on_step=on_step)[0]
                seconds = time.perf_counter() - t0
            out = self._result_dir()
            try:
                say(0.8, "writing the mp4")
                video_path = write_mp4(clip, out / "clip.mp4")
                audio_path = write_wav(clip.audio, clip.sample_rate, out / "audio.wav")
            except BaseException:
                self._release(out)
                raise
        result = StudioResult(clip, video_path, audio_path, settings, notes, seconds)
        # the folder stays live until `inspect` has written the figure, or until the caller drops the
        # result without inspecting it
        result.release = weakref.finalize(result, self._release, out)
        return result

    def inspect(self, result: StudioResult, progress: Progress | None = None) -> StudioResult:
        """The sync report of the written mp4 and the figure (a second or so, after the clip is shown)."""
        say = progress or _silent
        try:
            with self._working():
                say(0.85, "measuring sync")
                result.report = analyse_file(result.video_path, result.settings.prompt, self.judges)
                if result.clip.meta.get("timeline"):  # what a timeline model was asked to place, next to what it placed
                    result.report["timeline_s"] = [[lab, round(a, 4), round(b, 4)]
                                                   for lab, a, b in result.clip.meta["timeline"]]
                say(0.95, "drawing the figure")
                result.figure_path = render_figure(result.clip, result.report,
                                                   result.video_path.with_name("figure.png"))
        finally:
            if result.release is not None:
                result.release()  # a finaliser runs once: nothing is left for garbage collection to do
        say(1.0, "done")
        return result

    def stream(self, settings: GenerateSettings, duration: float):
        """Check, then make a clip of `duration` seconds as a stream (`avgen.api.stream`): yields each
        `StreamChunk` as soon as it is made, then the written mp4 of the whole clip (a Path). Holds the
        model for the whole stream, as `make` does for one clip."""
        prompt = self.pipe.vocabulary_for(duration).parse(settings.prompt)
        settings = settings.replace(prompt=prompt.text, num_clips=1, duration=duration, mode="t2av").check()
        with self._working():
            chunks = []
            with self._lock:
                self._move_to(settings.device)
                for chunk in stream(self.pipe, settings):
                    if self._stopping.is_set():
                        raise StudioStopped("the studio is shutting down: this stream was not finished")
                    chunks.append(chunk)
                    yield chunk
            out = self._result_dir()
            try:
                path = write_mp4(as_clip(chunks, settings.prompt, {"seed": settings.seed, "mode": "t2av"}),
                                 out / "stream.mp4")
            finally:
                self._release(out)
        yield path

    def warm_up(self) -> float:
        """One cheap sampling so the first person does not pay for lazy initialisation; seconds taken."""
        t0 = time.perf_counter()
        with self._lock:
            generate(self.pipe, GenerateSettings(steps=1, device=self.default_device))
            if self.pipe.student is not None:  # the fast sampler's network and decode too (the stream's first chunk)
                generate(self.pipe, GenerateSettings(sampler="fast", device=self.default_device))
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ shutdown
    def stop(self, timeout: float = 30.0) -> bool:
        """Shut down for process exit: refuse new requests, end a sampling in flight at its next step
        (StudioStopped in its thread), and wait until no request is inside `make` or `inspect`, up to
        `timeout` seconds. True when none is. Why wait: Gradio runs requests in daemon threads, and an
        interpreter that exits while one of them is inside torch or PyAV aborts ("terminate called
        without an active exception", SIGABRT), at times before its exit handlers have removed the
        temp folder."""
        self._stopping.set()
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    @contextmanager
    def _working(self):
        """Counts the request as inside the studio (see `stop`); StudioStopped once it is stopping."""
        with self._idle:
            if self._stopping.is_set():
                raise StudioStopped("the studio is shutting down: try again when it is back")
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    # ------------------------------------------------------------------ housekeeping
    def _move_to(self, device: str) -> None:
        target = resolve_device(self.default_device if device == "auto" else device)
        if self.pipe.device != target:
            self.pipe.to(target)

    def _result_dir(self) -> Path:
        """A fresh folder for one result, live until it is inspected, named by 128 random bits: the page
        serves each visitor Gradio's own copy of a result (under a keyed hash of its content), and nobody
        can name another visitor's folder (numbered folders could be counted down from one's own). The
        oldest folders beyond `keep_results` are deleted (Gradio keeps its copy), except live ones:
        another request may still be writing or measuring its clip there."""
        with self._folders:
            out = self.results_dir / secrets.token_hex(16)
            out.mkdir(parents=True)
            self._live.add(out)
            self._made.append(out)
            old, self._made = self._made[: -self.limits.keep_results], self._made[-self.limits.keep_results:]
            for d in old:
                if d in self._live:
                    self._made.insert(0, d)  # pruned later, once its request is done with it
                else:
                    shutil.rmtree(d, ignore_errors=True)
        return out

    def _release(self, folder: Path) -> None:
        """The result in `folder` is complete: from now on it may be pruned (idempotent)."""
        with self._folders:
            self._live.discard(folder)


# ----------------------------------------------------------------------------- analysis and figure
def load_judges(folder=None):
    """(the eval suite's digit judges, "") or, when none are trained yet, (None, a note saying so for
    the page): the studio still reports timing without them."""
    try:
        return Judges.load(folder), ""
    except FileNotFoundError as e:
        return None, f"digits are not read: {e}"


def analyse_file(path: Path, prompt: str, judges) -> dict:
    """The eval suite's per-clip analysis of the mp4 the person gets (decoded with the container's
    timing, as `avgen eval` reads any file), with the digits read against the prompt if there is one."""
    cfg = EvalConfig()
    usable = judges if judges is not None and judge_can_read(judges, prompt) else None
    return analyse(load_signal(path, cfg), cfg, usable, prompt or None).record


def render_figure(clip: Clip, report: dict, path) -> Path:
    """Frame strip over the spectrogram, detected onsets of both modalities, what the judges read."""
    detected = {k: report[k] for k in ("video_onsets_s", "audio_onsets_s")}
    offset = report["av_offset_ms"]
    title = (f"prompt {clip.prompt or '(none)'!r}   seen {' '.join(report.get('video_digits', [])) or '-'}   "
             f"heard {' '.join(report.get('audio_digits', [])) or '-'}   AV offset "
             + (f"{offset:+.1f} ms" if math.isfinite(offset) else "n/a")
             + "\nonsets: video solid green, audio dashed yellow")
    return render_sheet(clip, path, detected=detected, title=title)


def report_json(report: dict, settings: GenerateSettings | None = None) -> dict:
    """The record for JSON (the page's raw view, API callers), with the settings that made the clip:
    strict (NaN, undefined, -> null), and without the server-side file path (of no use to the person,
    and Gradio takes a "path" key for a file)."""
    record = {k: v for k, v in report.items() if k != "path"}
    if settings is not None:
        record["settings"] = settings.to_dict()
    return strict(record)


def report_markdown(report: dict, seconds: float | None = None, notes: list[str] | None = None) -> str:
    """The sync report as a small table for people."""
    def num(v, fmt):
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    def listed(xs, fmt="{}"):
        return " ".join(fmt.format(x) for x in xs) or "none"

    m = metrics_from_record(report)
    rows = [("AV offset (audio late > 0)", f"{num(report['av_offset_ms'], '+.1f')} ms"),
            ("offset confidence", num(report["offset_confidence"], ".2f")),
            ("onset F1 (audio vs video, 1 frame)", num(report["onset_f1"], ".2f")),
            ("digits seen (picture)", listed(report.get("video_digits", []))),
            ("digits heard (sound)", listed(report.get("audio_digits", []))),
            ("video onsets (s)", listed(report["video_onsets_s"], "{:.3f}")),
            ("audio onsets (s)", listed(report["audio_onsets_s"], "{:.3f}"))]
    if report.get("timeline_s"):
        rows.append(("timeline asked for (s)", ", ".join(f"{lab} ({a:.3f}-{b:.3f})" for lab, a, b in report["timeline_s"])))
    if report.get("prompt"):
        rows += [("prompt", report["prompt"]),
                 ("picture matches prompt", num(m["video_digit_accuracy"], ".0%")),
                 ("sound matches prompt", num(m["audio_digit_accuracy"], ".0%")),
                 ("picture and sound agree", num(m["av_agreement"], ".0%"))]
    if seconds is not None:
        rows.append(("generation time", f"{seconds:.2f} s"))
    lines = ["| measure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    lines += [f"\n*{n}*" for n in notes or []]
    return "\n".join(lines)
