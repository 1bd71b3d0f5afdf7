"""One clip's measurements, and many clips' summary: what `avgen eval` computes on any decoded clip.

Every clip, whatever its origin, is evaluated the same way: from a media file, decoded with the
container's timing (`avgen.data.io.decode_av`), never from a dataset's metadata. Ground truth
(dataset controls, or the timeline a timeline model drew for a generated clip) is used only for the
`*_gt` onset scores; prompts only for digit accuracy.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avgen.data.io import decode_av
from avgen.eval.frechet import Floor, bootstrap_ci, floor, frechet_distance, kid, stack
from avgen.eval.judges import Judges, event_frames, event_sound, image_input, speech_input
from avgen.eval.seams import seam_record
from avgen.eval.sync import av_align, estimate_offset, match_onsets
from avgen.signal.onsets import AVSignal, Detected, OnsetConfig, Track, detect_events, envelope, level_db, onsets, tracks
from avgen.util import one_line

MEDIA = ("video", "audio")


@dataclass(frozen=True)
class EvalConfig:
    onset: OnsetConfig = OnsetConfig()
    max_lag_s: float = 0.5  # the offset search range, +-
    n_boot: int = 1000  # bootstrap resamples for the 95% intervals
    seed: int = 0
    n_plots: int = 4  # clips drawn in the envelope plot
    av_align: bool = True  # the literature's metric (its optical flow is a third of the analysis time)
    # frames are shrunk to at most this many pixels a side as they are decoded: a 4K phone clip never
    # sits in memory at 4K (the onsets read 64 px, the judges 28; the project's own mp4s are 256)
    decode_max_side: int = 512


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
    seams: list[float] | None = None  # a long generated clip's window seams (s): scored by `seams.seam_record`


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
    # as many events in the picture as in the sound (what an unconditional clip can be asked)
    rec["av_count_counts"] = [int(len(events["video"]) == len(events["audio"])), 1]
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
    """Labels read against the prompt in each modality, and the two modalities against each other; an
    empty prompt (an unconditional clip) has only the latter."""
    words = prompt.split()
    pairs = {"video_digit": (words, video), "audio_digit": (words, audio)} if words else {}
    out = {}
    for name, (ref, read) in {**pairs, "av_agreement": (video, audio)}.items():
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
    return AVSignal.from_decoded(decode_av(path, max_side=cfg.decode_max_side), cfg.onset.video_max_side)


def evaluate(items: list[Item], cfg: EvalConfig = EvalConfig(), judges: Judges | None = None,
             progress=None) -> Report:
    """Analyse every item. Whatever goes wrong with one file (it cannot be opened or decoded, or its
    analysis fails on a shape nobody foresaw) becomes that file's {"path", "error"} record, and the run
    goes on: one bad file never costs the others their figures."""
    t0 = time.time()
    records, analyses = [], []
    for i, item in enumerate(items):
        try:
            sig = load_signal(item.path, cfg)
            usable = judges if item.prompt is None or judge_can_read(judges, item.prompt) else None
            a = analyse(sig, cfg, usable, item.prompt, item.truth)
            if item.seams is not None:
                a.record.update(seam_record(a.record, item.seams, SEAM_TOLERANCE_S))
        except ValueError as e:  # AVReadError (the reader's own words) and files without usable timing
            records.append({"path": str(item.path), "error": one_line(e)})
        except Exception as e:  # noqa: BLE001 - the per-file guard: recorded, and the run goes on
            records.append({"path": str(item.path), "error": f"analysis failed: {type(e).__name__}: {one_line(e)}"})
        else:
            records.append(a.record)
            analyses.append(a)
        if progress:
            progress(i + 1, len(items))
    return Report(records, summarise(records, cfg), analyses, time.time() - t0)


def judge_can_read(judges: Judges | None, prompt: str) -> bool:
    return judges is not None and all(w in judges.image.cfg.labels for w in prompt.split())


SCALARS = ("av_offset_ms", "abs_offset_ms", "offset_confidence", "onset_precision", "onset_recall", "onset_f1",
           "onset_f1_video_gt", "onset_f1_audio_gt", "av_align", "seam_event_offset_ms", "elsewhere_event_offset_ms")
# picture and sound onsets paired for the seam offsets: wider than a frame, so a seam that moved one
# modality shows as a larger offset rather than as an unpaired event
SEAM_TOLERANCE_S = 0.2
POOLED = {"video_digit_accuracy": "video_digit_counts", "audio_digit_accuracy": "audio_digit_counts",
          "av_agreement": "av_agreement_counts",
          # clips with exactly one event per prompt label (counting is what the digit accuracies hinge on)
          "video_count_accuracy": "video_count_counts", "audio_count_accuracy": "audio_count_counts",
          "av_count_agreement": "av_count_counts",  # clips with as many events in the picture as in the sound
          # long clips: 2-s windows on a seam / away from seams with as many picture as sound events
          "seam_count_agreement": "seam_count_counts", "elsewhere_count_agreement": "elsewhere_count_counts"}


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



__all__ = ["MEDIA", "POOLED", "SCALARS", "Analysis", "EvalConfig", "Item", "Report", "Truth", "analyse", "evaluate",
           "frechet_summary", "judge_can_read", "load_signal", "prompt_scores", "sequence_score", "summarise"]
