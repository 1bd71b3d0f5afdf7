"""The evaluation suite: video files, dataset controls or generated clips -> per-clip records,
a summary with bootstrap 95% intervals, a terminal table and PNG plots.

Every clip, whatever its origin, is evaluated the same way: from a media file, decoded with
the container's timing (`avgen.data.io.decode_av`), never from a dataset's metadata. Dataset
controls and generated clips are therefore first written to mp4, so the ceiling, the floors
and a model are measured through the same codec and reader. Ground truth (dataset mode, or the
timeline a timeline model drew for a generated clip) is used only for the `*_gt` onset scores;
prompts only for digit accuracy.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from avgen.data.clip import Clip
from .frechet import Floor, bootstrap_ci, floor, frechet_distance, kid, stack
from .judges import Judges, event_frames, event_sound, image_input, speech_input
from .onsets import AVSignal, Detected, OnsetConfig, Track, detect_events, envelope, level_db, onsets, tracks
from .sync import av_align, estimate_offset, match_onsets

MEDIA = ("video", "audio")


@dataclass(frozen=True)
class EvalConfig:
    onset: OnsetConfig = OnsetConfig()
    max_lag_s: float = 0.5  # the offset search range, +-
    n_boot: int = 1000  # bootstrap resamples for the 95% intervals
    seed: int = 0
    n_plots: int = 4  # clips drawn in the envelope plot
    av_align: bool = True  # the literature's metric (its optical flow is a third of the analysis time)


@dataclass
class Truth:
    """Ground-truth onsets per modality (seconds on the video clock)."""

    video: list[float]
    audio: list[float]


@dataclass
class Item:
    """One file to evaluate, with what is known about it."""

    path: Path
    prompt: str | None = None
    truth: Truth | None = None


@dataclass
class Analysis:
    """One clip's measurements: `record` is its JSON; the rest feeds plots and Frechet."""

    record: dict
    envelopes: dict[str, np.ndarray] = field(default_factory=dict)
    events: dict[str, list[Detected]] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)  # (k, d) judge embeddings per modality
    grid_s: float = 0.0


# ----------------------------------------------------------------------------- one clip
def analyse(sig: AVSignal, cfg: EvalConfig = EvalConfig(), judges: Judges | None = None,
            prompt: str | None = None, truth: Truth | None = None) -> Analysis:
    """Everything the suite measures on one decoded clip (see the module docstring)."""
    trk = tracks(sig, cfg.onset)
    n_grid = int(math.ceil(sig.duration / cfg.onset.grid_s))
    env = {m: envelope(trk[m], cfg.onset.grid_s, n_grid) for m in MEDIA}
    events = {m: detect_events(trk[m]) for m in MEDIA}
    rec = sync_record(sig, env, events, cfg, truth)
    features = {}
    if judges is not None:
        features = read_digits(sig, trk, events, judges, rec)
        if prompt is not None:
            rec.update(prompt_scores(prompt, rec["video_digits"], rec["audio_digits"]))
    if prompt is not None:
        rec["prompt"] = prompt
        if prompt.split():  # one event per prompt label, in each modality (the judges are not needed)
            rec.update({f"{m}_count_counts": [int(len(events[m]) == len(prompt.split())), 1] for m in MEDIA})
    return Analysis(rec, env, events, features, cfg.onset.grid_s)


def sync_record(sig: AVSignal, env: dict[str, np.ndarray], events: dict[str, list[Detected]], cfg: EvalConfig,
                truth: Truth | None) -> dict:
    """The timing half of a clip's record: offset, onsets, matching, AV-Align, ground truth."""
    est = estimate_offset(env["video"], env["audio"], cfg.onset.grid_s, cfg.max_lag_s)
    times = {m: onsets(events[m]) for m in MEDIA}
    tol = 1.0 / sig.fps  # "within one video frame"
    av = match_onsets(times["video"], times["audio"], tol)
    rec = {"path": sig.source, "duration_s": round(sig.duration, 4), "fps": sig.fps, "sample_rate": sig.sample_rate,
           "av_offset_ms": est.offset_ms, "abs_offset_ms": abs(est.offset_ms), "offset_confidence": est.confidence,
           "video_onsets_s": rounded(times["video"]), "audio_onsets_s": rounded(times["audio"]),
           "video_events_s": [[round(e.onset_s, 4), round(e.end_s, 4)] for e in events["video"]],
           "audio_events_s": [[round(e.onset_s, 4), round(e.end_s, 4)] for e in events["audio"]],
           "onset_precision": av.precision, "onset_recall": av.recall, "onset_f1": av.f1,
           "av_align": av_align(sig) if cfg.av_align else math.nan}
    if truth is not None:
        for m in MEDIA:
            rec[f"onset_f1_{m}_gt"] = match_onsets(getattr(truth, m), times[m], tol).f1
    return rec


def rounded(x) -> list[float]:
    return [round(float(v), 4) for v in x]


def peak_event(track: Track) -> Detected:
    """Stand-in for a clip with no detected event: 0.3 s around its most active moment, so that
    every clip adds features to the Frechet sets (a clip of noise must count, not vanish)."""
    t = float(track.times[int(np.argmax(level_db(track)))])
    return Detected(t - 0.1, t + 0.2, 0.0)


def read_digits(sig: AVSignal, trk: dict[str, Track], events: dict[str, list[Detected]], judges: Judges,
                rec: dict) -> dict[str, np.ndarray]:
    """The judges' reading of each detected event (into `rec`); returns each event's Frechet
    feature: the judge's embedding of it and its log duration (what it is, and how long it
    holds: frames shuffled in time make short flickers of clean digits)."""
    inputs = {
        "video": lambda ev: image_input(event_frames(sig.frames, sig.frame_times, sig.fps, ev)),
        "audio": lambda ev: speech_input(event_sound(sig.audio, sig.sample_rate, ev), sig.sample_rate),
    }
    judge = {"video": judges.image, "audio": judges.speech}
    features = {}
    for m in MEDIA:
        evs = events[m] or [peak_event(trk[m])]
        prepare = getattr(judge[m], "prepare", None)  # judges with their own input (shapes); else the digits'
        reading = judge[m]([prepare(sig, ev) if prepare else inputs[m](ev) for ev in evs])
        rec[f"{m}_digits"] = reading.labels if events[m] else []
        log_duration = np.log([max(ev.duration, 1e-3) for ev in evs])[:, None]
        features[m] = np.concatenate([reading.embeddings, log_duration], axis=1)
    return features


def sequence_score(reference: list[str], read: list[str]) -> tuple[int, int]:
    """(correct, total) of two label sequences compared in order: a missing, extra or different
    label is wrong, so total = the longer length."""
    return sum(a == b for a, b in zip(reference, read)), max(len(reference), len(read))


def prompt_scores(prompt: str, video: list[str], audio: list[str]) -> dict:
    words = prompt.split()
    out = {}
    for name, (ref, read) in {"video_digit": (words, video), "audio_digit": (words, audio),
                              "av_agreement": (video, audio)}.items():
        correct, total = sequence_score(ref, read)
        out[f"{name}_counts"] = [correct, total]
    return out


# ----------------------------------------------------------------------------- many clips
@dataclass
class Report:
    clips: list[dict]
    summary: dict
    analyses: list[Analysis]
    seconds: float

    def to_json(self) -> dict:
        return {"summary": self.summary, "clips": self.clips}


def load_signal(path: Path, cfg: EvalConfig) -> AVSignal:
    from avgen.data.io import decode_av

    return AVSignal.from_decoded(decode_av(path), cfg.onset.video_max_side)


def evaluate(items: list[Item], cfg: EvalConfig = EvalConfig(), judges: Judges | None = None,
             progress=None) -> Report:
    """Analyse every item; a file that cannot be read gets {"path", "error"} and the run goes on."""
    t0 = time.time()
    records, analyses = [], []
    for i, item in enumerate(items):
        try:
            sig = load_signal(item.path, cfg)
        except ValueError as e:  # avgen.data.io.AVReadError and files without usable timing
            records.append({"path": str(item.path), "error": str(e)})
            continue
        usable = judges if item.prompt is None or judge_can_read(judges, item.prompt) else None
        a = analyse(sig, cfg, usable, item.prompt, item.truth)
        records.append(a.record)
        analyses.append(a)
        if progress:
            progress(i + 1, len(items))
    return Report(records, summarise(records, cfg), analyses, time.time() - t0)


def judge_can_read(judges: Judges | None, prompt: str) -> bool:
    return judges is not None and all(w in judges.image.cfg.labels for w in prompt.split())


SCALARS = ("av_offset_ms", "abs_offset_ms", "offset_confidence", "onset_precision", "onset_recall", "onset_f1",
           "onset_f1_video_gt", "onset_f1_audio_gt", "av_align")
POOLED = {"video_digit_accuracy": "video_digit_counts", "audio_digit_accuracy": "audio_digit_counts",
          "av_agreement": "av_agreement_counts",
          # clips with exactly one event per prompt label (counting is what the digit accuracies hinge on)
          "video_count_accuracy": "video_count_counts", "audio_count_accuracy": "audio_count_counts"}


def pooled(rows: np.ndarray) -> float:
    total = rows[:, 1].sum()
    return float(rows[:, 0].sum() / total) if total else math.nan


def summarise(records: list[dict], cfg: EvalConfig = EvalConfig()) -> dict:
    """Means, medians and bootstrap 95% intervals (of the mean; of the pooled ratio for
    accuracies, resampling clips) for every per-clip number; NaNs (undefined) are counted."""
    ok = [r for r in records if "error" not in r]
    out = {"n_clips": len(records), "n_errors": len(records) - len(ok)}
    for key in SCALARS:
        vals = np.array([r[key] for r in ok if key in r], np.float64)
        if not len(vals):
            continue
        good = vals[~np.isnan(vals)]
        lo, hi = bootstrap_ci(good, np.mean, cfg.n_boot, cfg.seed)
        out[key] = {"mean": mean_or_nan(good), "median": float(np.median(good)) if len(good) else math.nan,
                    "ci95": [lo, hi], "n": int(len(good)), "n_undefined": int(len(vals) - len(good))}
    if "abs_offset_ms" in out:
        vals = np.array([r["abs_offset_ms"] for r in ok if "abs_offset_ms" in r], np.float64)
        good = vals[~np.isnan(vals)]
        out["median_abs_offset_ms"] = {"value": out["abs_offset_ms"]["median"],
                                       "ci95": list(bootstrap_ci(good, np.median, cfg.n_boot, cfg.seed))}
    for name, key in POOLED.items():
        rows = np.array([r[key] for r in ok if key in r], np.float64)
        if len(rows):
            out[name] = {"value": pooled(rows), "ci95": list(bootstrap_ci(rows, pooled, cfg.n_boot, cfg.seed)),
                         "n_clips": int(len(rows)), "n_items": int(rows[:, 1].sum())}
    return out


def mean_or_nan(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


# ----------------------------------------------------------------------------- Frechet
def frechet_summary(evaluated: list[Analysis], reference: list[Analysis], n: int | None = None,
                    repeats: int = 10, seed: int = 0) -> dict:
    """FD and KID (video / audio judge features) of the evaluated clips against real ones, each
    beside its real-vs-real floor at the same N. `reference` must hold >= 2N clips.

    Every feature is first divided by its spread over the reference clips, so distances are in
    units of real variability and no dimension (a log duration next to embeddings) weighs by
    its units."""
    n = n or len(evaluated)
    out = {"frechet_n_clips": n}
    for m in MEDIA:
        ev = [a.features[m] for a in evaluated[:n] if m in a.features]
        pool = [a.features[m] for a in reference if m in a.features]
        if len(ev) < 2 or len(pool) < 2 * n:
            raise ValueError(f"Frechet needs >= 2 evaluated clips and >= {2 * n} reference clips "
                             f"(got {len(ev)} and {len(pool)})")
        scale = stack(pool, range(len(pool))).std(axis=0) + 1e-6
        ev, pool = [f / scale for f in ev], [f / scale for f in pool]
        x, y = stack(ev, range(len(ev))), stack(pool, range(n))
        fl: Floor = floor(pool, n, repeats, seed)
        out[f"fd_{m}"] = frechet_distance(x, y)
        out[f"kid_{m}"] = kid(x, y, seed=seed)
        out[f"fd_{m}_floor"] = {"mean": fl.fd_mean, "std": fl.fd_std, "n": n, "repeats": repeats}
        out[f"kid_{m}_floor"] = {"mean": fl.kid_mean, "std": fl.kid_std, "n": n, "repeats": repeats}
        out[f"frechet_{m}_events"] = int(len(x))
    return out


# ----------------------------------------------------------------------------- dataset controls
@dataclass(frozen=True)
class Control:
    """How real clips are altered before they are written (all default: the ceiling)."""

    shift_ms: float = 0.0  # delay the audio (negative: advance), padding with silence (see shift_clip)
    swap_audio: bool = False  # the audio of another clip (the semantic floor)
    random_events: bool = False  # each event's sound moved to a random time (the onset-F1 floor)
    corrupt: str | None = None  # "noise" | "shuffle": Frechet controls (no ground truth kept)
    codec: str | None = None  # a weights folder: both modalities through its codec, encode -> decode
    # (the representation's ceiling: what a model that denoised perfectly would still lose)
    renoise: float | None = None  # with codec: both modalities noised to this level and denoised by
    # that model (SDEdit): what its steps below the level keep of real clips

    def __post_init__(self):
        if self.renoise is not None and not (self.codec and 0 < self.renoise < 1):
            raise ValueError(f"renoise needs a model (codec=WEIGHTS) and a noise level in (0, 1), got {self.renoise!r}")
        if self.corrupt not in (None, "noise", "shuffle"):
            raise ValueError(f"corrupt must be 'noise' or 'shuffle', got {self.corrupt!r}")
        if abs(self.shift_ms) >= 3000:
            raise ValueError(f"--shift-ms {self.shift_ms} is longer than a clip")

    def describe(self) -> str:
        parts = [f"shift {self.shift_ms:+g} ms"] if self.shift_ms else []
        parts += ["swapped audio"] * self.swap_audio + ["random audio events"] * self.random_events
        parts += [f"corrupt={self.corrupt}"] if self.corrupt else []
        if self.renoise is not None:
            parts += [f"re-noised to t = {self.renoise:g} and denoised ({self.codec})"]
        elif self.codec:
            parts += [f"codec round trip ({self.codec})"]
        return ", ".join(parts) or "none"


def shift_clip(clip: Clip, shift_ms: float) -> tuple[Clip, float, float]:
    """The sound moved by `shift_ms` against the picture (+: later), losing neither: a delay
    puts that much silence before the sound; an advance puts whole blank frames (rounded up)
    before the picture and the rest of the difference as silence before the sound. The shorter
    modality is then padded at the end (silence, blank frames), so every event stays in the
    clip. Returns the clip and how far the picture and the sound moved (s)."""
    fps, sr = clip.fps, clip.sample_rate
    spf = sr // fps
    lead_frames = 0 if shift_ms >= 0 else math.ceil(-shift_ms / 1000 * fps - 1e-9)
    lead_samples = int(round((lead_frames / fps + shift_ms / 1000) * sr))
    frames = np.concatenate([np.zeros((lead_frames, *clip.frames.shape[1:]), np.float32), clip.frames])
    audio = np.concatenate([np.zeros(lead_samples, np.float32), clip.audio])
    n = max(len(frames), math.ceil(len(audio) / spf))
    frames = np.concatenate([frames, np.zeros((n - len(frames), *frames.shape[1:]), np.float32)])
    audio = np.pad(audio, (0, n * spf - len(audio)))
    out = Clip(frames, audio, fps, sr, clip.events, clip.prompt, dict(clip.meta))
    return out, lead_frames / fps, lead_samples / sr


def scatter_events(clip: Clip, ds, rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Each event's sound cut out and laid out again at random, with the dataset's own layout
    rule (frame grid, minimum gap) but an independent draw: the onset-F1 floor."""
    from avgen.data.events import layout

    spf = clip.sample_rate // clip.fps
    cuts = [clip.audio[round(e.start_s * clip.fps) * spf: round(e.end_s * clip.fps) * spf] for e in clip.events]
    starts = layout([len(c) // spf for c in cuts], clip.num_frames, ds.min_gap_frames, rng)
    audio = np.zeros_like(clip.audio)
    for c, f0 in zip(cuts, starts):
        audio[f0 * spf: f0 * spf + len(c)] = c
    return audio, [f0 / clip.fps for f0 in starts]


def corrupt_clip(clip: Clip, how: str, rng: np.random.Generator) -> Clip:
    """noise: uniform-noise frames and white noise at the clip's loudness; shuffle: frames in a
    random order and the audio's 0.1 s chunks too. Both keep every marginal statistic a
    feature-blind metric could check, and destroy what a clip means."""
    frames, audio = clip.frames, clip.audio
    if how == "noise":
        frames = rng.uniform(0, 1, frames.shape).astype(np.float32)
        audio = (rng.standard_normal(len(audio)) * (audio.std() + 1e-3)).astype(np.float32)
    else:
        frames = frames[rng.permutation(len(frames))]
        chunk = clip.sample_rate // 10
        n = len(audio) // chunk
        audio = np.concatenate([audio[: n * chunk].reshape(n, chunk)[rng.permutation(n)].ravel(), audio[n * chunk:]])
    return Clip(frames, audio.astype(np.float32), clip.fps, clip.sample_rate, [], clip.prompt, dict(clip.meta))


def codec_of(weights) -> "AVCodec":
    """The fixed codec of the model at `weights` (its stored config; the network is not loaded)."""
    from avgen.model.codec import AVCodec
    from avgen.model.transformer import AVDiT

    try:  # the same reader as the pipeline and the weights check
        config = AVDiT.load_config(Path(weights) / "transformer", local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{weights} holds no usable transformer/config.json (give a model weights folder): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return AVCodec.from_config(config)


def renoise_model(control: Control):
    """The pipeline of the weights that `control.codec` names (for `control.renoise`), loaded once."""
    from avgen.model.pipeline import load_pipeline

    pipe = load_pipeline(control.codec)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def codec_clip(clip: Clip, codec) -> Clip:
    """Both modalities encoded to the model's tokens and decoded back, on the clip's own events:
    any clip the model could make is at best this. Refuses a codec built for another clip format."""
    import torch

    s = codec.spec
    if (clip.fps, clip.sample_rate, clip.frames.shape[1:]) != (s.fps, s.sample_rate, (s.height, s.width, s.channels)):
        raise ValueError(f"the codec is for {s.fps} fps, {s.sample_rate} Hz, {s.height}x{s.width}x{s.channels} "
                         f"frames; the clips are {clip.fps} fps, {clip.sample_rate} Hz, {clip.frames.shape[1:]}")
    per_token = codec.cfg.frames_per_token
    if clip.num_frames % per_token or len(clip.audio) != clip.num_frames * s.samples_per_frame:
        raise ValueError(f"a clip of {clip.num_frames} frames and {len(clip.audio)} samples is not a whole number "
                         f"of the codec's {per_token}-frame tokens of {s.samples_per_frame} samples per frame")
    with torch.no_grad():
        tokens = codec.encode(torch.from_numpy(clip.frames)[None], torch.from_numpy(clip.audio)[None])
        frames, audio = codec.decode(tokens)
    return Clip(frames[0].numpy(), audio[0].numpy(), clip.fps, clip.sample_rate, clip.events, clip.prompt,
                dict(clip.meta))


def renoised_clip(clip: Clip, pipe, strength: float, seed: int) -> Clip:
    """Both modalities of `clip` noised to level `strength` and denoised by `pipe` from there, with the
    clip's prompt, its own timeline and the default settings (`AVGenPipeline`'s `strength`). The audio is
    decoded as the model drew it (no postfilter): this measures the model."""
    import torch

    from avgen.model.pipeline import GenerateSettings

    out = pipe(clip.prompt, init_video=clip.frames, init_audio=clip.audio, strength=strength,
               guidance_scale=GenerateSettings.guidance_scale, generator=torch.Generator().manual_seed(seed),
               postfilter=False)
    return Clip(out.frames[0], out.audio[0].astype(np.float32), clip.fps, clip.sample_rate, clip.events, clip.prompt,
                dict(clip.meta))


def control_clip(ds, index: int, control: Control, n: int, seed: int, codec=None) -> tuple[Clip, Truth | None]:
    """Clip `index` of the dataset with the control applied, and its ground truth. `codec` is
    the codec that `control.codec` names, or for `control.renoise` its pipeline (loaded once by the
    caller; loaded here when None)."""
    clip = ds[index]
    video_truth = [e.start_s for e in clip.events]
    audio, audio_truth = clip.audio, list(video_truth)
    rng = np.random.default_rng([seed, index, 7])
    if control.swap_audio:
        donor = ds[(index + 1) % n]  # a derangement of the evaluated clips
        audio, audio_truth = donor.audio, [e.start_s for e in donor.events]
    if control.random_events:
        audio, audio_truth = scatter_events(clip, ds, rng)
    out = Clip(clip.frames, audio, clip.fps, clip.sample_rate, clip.events, clip.prompt, dict(clip.meta))
    if control.shift_ms:
        out, video_delay, audio_delay = shift_clip(out, control.shift_ms)
        video_truth = [t + video_delay for t in video_truth]
        audio_truth = [t + audio_delay for t in audio_truth]
    if control.renoise is not None:
        pipe = codec if codec is not None else renoise_model(control)
        out = renoised_clip(out, pipe, control.renoise, int(rng.integers(2 ** 31)))
    elif control.codec:
        out = codec_clip(out, codec if codec is not None else codec_of(control.codec))
    if control.corrupt:
        return corrupt_clip(out, control.corrupt, rng), None
    return out, Truth(video_truth, audio_truth)


def dataset_items(name: str, split: str, n: int, out_dir: Path, control: Control = Control(), seed: int = 0,
                  data_root=None, first_index: int = 0) -> list[Item]:
    """Render n real clips (with a control), write them as mp4 and return them as items."""
    from avgen.data import make_dataset
    from avgen.data.io import write_mp4

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    ds = make_dataset(name, split=split, seed=seed, data_root=data_root)
    codec = None  # loaded once for all clips: the pipeline for renoise, else the codec alone
    if control.codec:
        codec = renoise_model(control) if control.renoise is not None else codec_of(control.codec)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(n):
        clip, truth = control_clip(ds, first_index + k, control, n, seed, codec)
        path = write_mp4(clip, out_dir / f"{name}_{split}_{first_index + k:05d}.mp4")
        items.append(Item(path, clip.prompt, truth))
    return items


def generated_items(weights, n: int, out_dir: Path, seed: int = 0, dataset: str = "talking-digits",
                    steps: int = 25, device: str = "auto", data_root=None, duration: float | None = None,
                    mode: str = "t2av", prompt: bool = True, **settings) -> list[Item]:
    """n clips from the model at `weights`, as mp4 files, with the prompts they are scored against.

    t2av: clip k uses prompt k of the test split's random prompt stream and seed `seed + k`.
    a2v / v2a: clip k is made from real test clip k's audio (a2v) or frames (v2a), held clean,
    with its prompt (or the null prompt when `prompt=False`: the given modality alone must say
    which digits); it is scored against that real clip's prompt, so the generated modality's
    accuracy says whether it follows what it was given. `settings` are further `GenerateSettings`
    fields (sampler, guidance_scale, modality_scale, ...).
    """
    from avgen.data import make_dataset
    from avgen.data.io import write_mp4

    try:
        from avgen.model.pipeline import GenerateSettings, generate, load_pipeline
    except ImportError as e:  # the model package is optional for evaluating files
        raise ValueError(f"--generate needs the model pipeline (avgen.model.pipeline): {e}") from None
    from dataclasses import replace

    # settings are checked (one line each: sampler, scales, mode, ...) before anything is loaded
    base = GenerateSettings(steps=steps, num_clips=1, device=device, duration=duration, mode=mode, **settings).check()
    pipe = load_pipeline(weights, device=device)
    pipe.set_progress_bar_config(disable=True)
    ds = make_dataset(dataset, split="test", seed=seed, data_root=data_root,
                      spec=pipe.codec.spec if mode != "t2av" else None)
    rng = np.random.default_rng([seed, 2])
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(n):
        given = {}
        if mode == "t2av":
            truth = " ".join(ds.random_labels(rng))
        else:
            real = ds[k]
            truth = real.prompt
            given = {"audio": real.audio} if mode == "a2v" else {"video": real.frames}
        clip = generate(pipe, replace(base, prompt=truth if prompt else "", seed=seed + k), **given)[0]
        # ground truth for the *_gt onset scores: the real clip's events (A2V / V2A), or the plan a timeline
        # model drew (text-to-AV), which says whether the plan was followed
        plan = [start for _, start, _ in (real.truth() if given else clip.meta.get("timeline", []))]
        items.append(Item(write_mp4(clip, out_dir / f"{mode}_{k:05d}.mp4"), truth, Truth(plan, plan) if plan else None))
    return items


def file_items(paths: list[str | Path], prompts: dict[str, str] | None = None) -> list[Item]:
    """Files and folders (searched recursively for video files) -> items, prompts from a manifest."""
    from avgen.data.io import VIDEO_EXTS

    items = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTS)
            if not found:
                raise ValueError(f"{p} holds no video files ({', '.join(VIDEO_EXTS)})")
            items += [Item(f) for f in found]
        elif p.exists():
            items.append(Item(p))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    for it in items:
        it.prompt = lookup_prompt(prompts or {}, it.path)
    return items


def read_manifest(path) -> dict[str, str]:
    """A JSON object {file: prompt}; relative names are relative to the manifest's folder."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt manifest {p} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"prompt manifest {p} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"prompt manifest {p} must be a JSON object mapping file names to prompt strings")
    return {str((p.parent / k).resolve()): v for k, v in data.items()} | {Path(k).name: v for k, v in data.items()}


def lookup_prompt(prompts: dict[str, str], path: Path) -> str | None:
    return prompts.get(str(path.resolve()), prompts.get(path.name))


# ----------------------------------------------------------------------------- output
def format_table(summary: dict) -> str:
    """The summary as an aligned text table."""
    lines = [f"{'metric':<24}{'mean':>10}{'median':>10}   {'95% CI':<20}{'n':>6}"]
    for key in SCALARS:
        if key in summary:
            s = summary[key]
            ci = f"[{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}]"
            undefined = f"  ({s['n_undefined']} undefined)" if s["n_undefined"] else ""
            lines.append(f"{key:<24}{fmt(s['mean']):>10}{fmt(s['median']):>10}   {ci:<20}{s['n']:>6}{undefined}")
    for key in ("median_abs_offset_ms", *POOLED):
        if key in summary:
            s = summary[key]
            ci = f"[{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}]"
            lines.append(f"{key:<24}{fmt(s['value']):>10}{'':>10}   {ci:<20}{s.get('n_clips', ''):>6}")
    for m in MEDIA:
        for kind in ("fd", "kid"):
            key = f"{kind}_{m}"
            if key in summary:
                fl = summary[f"{key}_floor"]
                lines.append(f"{key:<24}{fmt(summary[key]):>10}   real-vs-real floor {fmt(fl['mean'])} "
                             f"+- {fmt(fl['std'])} at N={fl['n']}")
    return "\n".join(lines)


def fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.3e}"


def clip_table(records: list[dict]) -> str:
    lines = [f"{'clip':<28}{'offset ms':>10}{'conf':>7}{'F1':>7}{'#v':>4}{'#a':>4}  digits (video | audio)"]
    for r in records:
        name = Path(r["path"]).name[:27]
        if "error" in r:
            lines.append(f"{name:<28}  error: {r['error']}")
            continue
        digits = f"{' '.join(r.get('video_digits', []))} | {' '.join(r.get('audio_digits', []))}" \
            if "video_digits" in r else ""
        lines.append(f"{name:<28}{fmt(r['av_offset_ms']):>10}{r['offset_confidence']:>7.2f}{r['onset_f1']:>7.3f}"
                     f"{len(r['video_onsets_s']):>4}{len(r['audio_onsets_s']):>4}  {digits}")
    return "\n".join(lines)


def write_json(report: Report, path: Path, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**(extra or {}), **report.to_json()}
    path.write_text(json.dumps(doc, indent=2, default=json_default, allow_nan=True))
    return path


def json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def plot_envelopes(analyses: list[Analysis], path: Path, n: int = 4) -> Path | None:
    """Both onset envelopes of the first n clips, detected events shaded, onsets marked."""
    plt = pyplot()
    if plt is None or not analyses:
        return None
    shown = analyses[:n]
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 2.2 * len(shown)), squeeze=False)
    for ax, a in zip(axes[:, 0], shown):
        t = np.arange(len(a.envelopes["video"])) * a.grid_s
        for m, colour, sign in (("video", "tab:blue", 1), ("audio", "tab:orange", -1)):
            e = a.envelopes[m]
            ax.plot(t, sign * e / (e.max() + 1e-12), color=colour, lw=0.8, label=f"{m} onset envelope")
            for ev in a.events[m]:
                ax.axvspan(ev.onset_s, ev.end_s, ymin=0.5 if sign > 0 else 0, ymax=1 if sign > 0 else 0.5,
                           color=colour, alpha=0.15)
                ax.axvline(ev.onset_s, color=colour, lw=1.2, ymin=0.5 if sign > 0 else 0, ymax=1 if sign > 0 else 0.5)
        r = a.record
        ax.set_title(f"{Path(r['path']).name}: offset {fmt(r['av_offset_ms'])} ms, conf {r['offset_confidence']:.2f}, "
                     f"F1 {fmt(r['onset_f1'])}", fontsize=9)
        ax.set_ylim(-1.05, 1.05)
        ax.set_yticks([-0.5, 0.5], ["audio", "video"])
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_offsets(records: list[dict], path: Path) -> Path | None:
    plt = pyplot()
    offs = np.array([r["av_offset_ms"] for r in records if "error" not in r], np.float64)
    offs = offs[~np.isnan(offs)]
    if plt is None or not len(offs):
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(np.clip(offs, -500, 500), bins=np.arange(-500, 501, 10), color="tab:purple")
    ax.axvline(float(np.median(offs)), color="k", lw=1, label=f"median {np.median(offs):.1f} ms")
    ax.set_xlabel("AV offset (ms, + = audio late)")
    ax.set_ylabel("clips")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pyplot():
    """matplotlib's pyplot on the file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


class WorkDir:
    """A folder for rendered clips: the one given (kept) or a temporary one (removed)."""

    def __init__(self, path=None):
        self.keep = path is not None
        self.path = Path(path) if path else Path(tempfile.mkdtemp(prefix="avgen-eval-"))

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def __exit__(self, *exc):
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def config_json(cfg: EvalConfig) -> dict:
    return asdict(cfg)
