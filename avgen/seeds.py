"""Curated presets (`seeds/*.json`): a prompt, an RNG seed and sampler settings whose clip reaches
the shipped quality bar, with the metrics it reached when measured.

One preset per file, `seeds/<name>.json`:

    {"name": "3-1-4", "prompt": "3 1 4", "seed": 7,
     "settings": {"steps": 25, "sampler": "euler", "guidance_scale": 6.0,
                  "audio_guidance_scale": null, "modality_scale": 1.0, "guidance_interval": [0.1, 0.8],
                  "postfilter": true},
     "metrics": {"video_digit_accuracy": 1.0, "audio_digit_accuracy": 1.0, "av_agreement": 1.0,
                 "onset_f1": 1.0, "abs_offset_ms": 4.2, "offset_confidence": 0.61}}

Metric values are never written by hand: `avgen seeds measure` generates each candidate on the CPU,
evaluates it with the eval suite and records what it reached; `avgen seeds check` (and the
regression test) regenerates every preset and fails if a metric fell below what is recorded.
The demo offers the presets as examples.
"""
from __future__ import annotations

import functools
import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from avgen.api.generate import generate
from avgen.api.settings import GenerateSettings, SettingError, is_number
from avgen.data.io import write_mp4
from avgen.eval.judges import Judges
from avgen.eval.suite import EvalConfig, analyse, load_signal
from avgen.util import write_json

DEFAULT_SEEDS_DIR = Path(__file__).resolve().parents[1] / "seeds"

# The sampler settings a preset pins (names = `avgen.api.settings.GenerateSettings` fields).
SETTING_KEYS = ("steps", "sampler", "guidance_scale", "audio_guidance_scale", "modality_scale", "guidance_interval",
                "postfilter")
PRESET_KEYS = ("name", "prompt", "seed", "settings", "metrics")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# Candidates `avgen seeds measure` tries when the seeds folder is empty: between them, every digit,
# every prompt length from one to three.
DEFAULT_PROMPTS = ("3 1 4", "7", "2 5", "9 0 6", "8 3")


@dataclass(frozen=True)
class Threshold:
    """One line of the quality bar (weights/README.md), applied to a single clip."""

    higher_is_better: bool
    bar: float
    tolerance: float  # how far a regenerated clip may fall short of the recorded value (CPU float noise)

    def meets(self, value: float) -> bool:
        return math.isfinite(value) and (value >= self.bar if self.higher_is_better else value <= self.bar)

    def holds(self, recorded: float, measured: float) -> bool:
        """The regenerated value is at least as good as the recorded one, within the tolerance."""
        if not math.isfinite(measured):
            return not math.isfinite(recorded)
        if self.higher_is_better:
            return measured >= recorded - self.tolerance
        return measured <= recorded + self.tolerance


# Per clip: accuracies are per prompt label in order (a 3-label clip scores 0, 1/3, 2/3 or 1), so
# the accuracy bars mean "every label right"; their tolerance is 0 because one flip is a real loss.
METRICS: dict[str, Threshold] = {
    "video_digit_accuracy": Threshold(True, 0.95, 0.0),
    "audio_digit_accuracy": Threshold(True, 0.90, 0.0),
    "av_agreement": Threshold(True, 0.90, 0.0),
    "onset_f1": Threshold(True, 0.90, 0.02),
    "abs_offset_ms": Threshold(False, 20.0, 5.0),
}
INFO_METRICS = ("offset_confidence",)  # recorded for people, not part of the bar


class SeedError(ValueError):
    """A preset file that does not follow the schema; the message names the file."""


@dataclass(frozen=True)
class SeedPreset:
    name: str
    prompt: str
    seed: int
    settings: dict = field(default_factory=dict)  # SETTING_KEYS -> value
    metrics: dict = field(default_factory=dict)  # METRICS / INFO_METRICS -> float

    @classmethod
    def from_dict(cls, d: dict, source: str = "preset") -> "SeedPreset":
        def fail(msg: str):
            raise SeedError(f"{source}: {msg}")

        if not isinstance(d, dict):
            fail("must be a JSON object")
        if set(d) != set(PRESET_KEYS):
            fail(f"keys must be exactly {list(PRESET_KEYS)}; missing {sorted(set(PRESET_KEYS) - set(d))}, "
                 f"unknown {sorted(set(d) - set(PRESET_KEYS))}")
        if not isinstance(d["name"], str) or not NAME_RE.match(d["name"]):
            fail(f"name must be 1-64 of a-z 0-9 _ - (a file name), got {d['name']!r}")
        if not isinstance(d["prompt"], str) or not d["prompt"].strip():
            fail("prompt must be a non-empty label sequence such as \"3 1 4\" (metrics are read against it)")
        if not isinstance(d["seed"], int) or isinstance(d["seed"], bool) or not 0 <= d["seed"] < 2 ** 63:
            fail(f"seed must be an integer in [0, 2^63), got {d['seed']!r}")
        settings, metrics = d["settings"], d["metrics"]
        if isinstance(settings, dict) and "postfilter" not in settings:
            settings = {**settings, "postfilter": False}  # written before the postfilter: measured without it
        if not isinstance(settings, dict) or set(settings) != set(SETTING_KEYS):
            fail(f"settings must hold exactly {list(SETTING_KEYS)}")
        if not isinstance(metrics, dict) or set(metrics) != set(METRICS) | set(INFO_METRICS):
            fail(f"metrics must hold exactly {sorted(set(METRICS) | set(INFO_METRICS))} "
                 "(written by `avgen seeds measure`)")
        bad = [k for k, v in metrics.items() if not (v is None or (is_number(v) and isinstance(v, (int, float))))]
        if bad:
            fail(f"metrics {bad} must be numbers (or null: not measurable)")
        problem = settings_problem(settings)
        if problem:
            fail(problem)
        return cls(d["name"], " ".join(d["prompt"].split()), d["seed"], dict(settings),
                   {k: math.nan if v is None else float(v) for k, v in metrics.items()})

    def to_dict(self) -> dict:
        """JSON-ready; an undefined metric (NaN) is written as null, which JSON can hold."""
        metrics = {k: v if math.isfinite(v) else None for k, v in self.metrics.items()}
        return {"name": self.name, "prompt": self.prompt, "seed": self.seed, "settings": dict(self.settings),
                "metrics": metrics}

    def generate_settings(self, device: str = "cpu"):
        """The `GenerateSettings` that regenerate this preset's clip."""
        return generate_settings(self.prompt, self.seed, self.settings, device)

    def bar_failures(self) -> list[str]:
        """Recorded metrics that miss the bar (empty when the preset deserves its place)."""
        return below_bar(self.metrics)


def settings_problem(settings: dict) -> str:
    """What is wrong with a preset's settings ('' if nothing), by the settings table's own rules."""
    try:
        GenerateSettings(**settings).check()
    except SettingError as e:
        return f"settings: {e}"
    except TypeError as e:  # a key GenerateSettings does not have
        return f"settings: {e}"
    return ""


def generate_settings(prompt: str, seed: int, settings: dict, device: str = "cpu") -> GenerateSettings:
    """(prompt, seed, pinned settings) -> the library's `GenerateSettings`."""
    return GenerateSettings(prompt=prompt, seed=seed, device=device, **settings)


def below_bar(metrics: dict) -> list[str]:
    return [f"{k} = {metrics[k]:.3g} misses the bar {'>=' if t.higher_is_better else '<='} {t.bar:g}"
            for k, t in METRICS.items() if not t.meets(metrics[k])]


def regressions(recorded: dict, measured: dict) -> list[str]:
    """Metrics whose regenerated value fell short of the recorded one (beyond the tolerance)."""
    return [f"{k}: recorded {recorded[k]:.4g}, regenerated {measured[k]:.4g} (tolerance {t.tolerance:g})"
            for k, t in METRICS.items() if not t.holds(recorded[k], measured[k])]


def name_for(prompt: str) -> str:
    """"3 1 4" -> "3-1-4": the file name of a prompt's preset."""
    name = "-".join(prompt.split()).lower()
    if not NAME_RE.match(name):
        raise ValueError(f"cannot name a preset after prompt {prompt!r}")
    return name


# ----------------------------------------------------------------------------- files
def load_presets(folder=DEFAULT_SEEDS_DIR) -> list[SeedPreset]:
    """Every `*.json` preset of a folder, sorted by name (a missing folder holds none).

    Each file's name must be its preset's name, so one prompt cannot silently shadow another.
    """
    folder = Path(folder)
    presets = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SeedError(f"{path}: not valid JSON ({e})") from None
        preset = SeedPreset.from_dict(data, str(path))
        if preset.name != path.stem:
            raise SeedError(f"{path}: name {preset.name!r} differs from the file name")
        presets.append(preset)
    return presets


def save_preset(preset: SeedPreset, folder) -> Path:
    SeedPreset.from_dict(preset.to_dict(), preset.name)  # never write what load_presets would refuse
    path = Path(folder) / f"{preset.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, preset.to_dict())
    return path


# ----------------------------------------------------------------------------- measuring
def metrics_from_record(rec: dict) -> dict[str, float]:
    """The eval suite's per-clip record -> preset metrics (NaN where undefined, e.g. no events)."""
    def ratio(key: str) -> float:
        correct, total = rec.get(key, (0, 0))
        return correct / total if total else math.nan

    offset = rec["av_offset_ms"]
    return {"video_digit_accuracy": ratio("video_digit_counts"), "audio_digit_accuracy": ratio("audio_digit_counts"),
            "av_agreement": ratio("av_agreement_counts"), "onset_f1": float(rec["onset_f1"]),
            "abs_offset_ms": abs(offset) if math.isfinite(offset) else math.nan,
            "offset_confidence": float(rec["offset_confidence"])}


@functools.lru_cache(maxsize=1)
def shipped_judges():
    """The judges in weights/judges, loaded once (FileNotFoundError says how to train them)."""
    return Judges.load()


def clip_metrics(clip, prompt: str, judges=None) -> dict[str, float]:
    """One generated clip -> the preset metrics, measured the way `avgen eval --generate` measures:
    written to mp4, decoded with the container's timing, analysed with the judges against the prompt."""
    cfg = EvalConfig()
    with tempfile.TemporaryDirectory(prefix="avgen-seed-") as tmp:
        path = write_mp4(clip, Path(tmp) / "clip.mp4")
        record = analyse(load_signal(path, cfg), cfg, judges or shipped_judges(), prompt).record
    return metrics_from_record(record)


MetricsFn = Callable[..., dict]  # (clip, prompt) -> metrics; clip_metrics unless a test stands in


def measure(pipe, prompt: str, seed: int, settings: dict, device: str = "cpu",
            metrics_fn: MetricsFn | None = None) -> dict[str, float]:
    """Generate the clip of (prompt, seed, settings) with the library generator and evaluate it."""
    clip = generate(pipe, generate_settings(prompt, seed, settings, device))[0]
    return (metrics_fn or clip_metrics)(clip, prompt)


@dataclass
class Curated:
    preset: SeedPreset
    tried: int  # seeds generated before this one was kept
    failures: list[str]  # bar misses of the kept preset (empty when it meets the bar)


def curate(pipe, prompt: str, settings: dict, first_seed: int = 0, tries: int = 16, device: str = "cpu",
           metrics_fn: MetricsFn | None = None, log: Callable[[str], None] = lambda s: None) -> Curated:
    """The first seed from `first_seed` whose clip meets the bar; if none of `tries` does, the best
    one (fewest bar misses, then the best onset F1), returned with its failures."""
    best = None
    for i in range(tries):
        seed = first_seed + i
        metrics = measure(pipe, prompt, seed, settings, device, metrics_fn)
        failures = below_bar(metrics)
        log(f"{prompt!r} seed {seed}: " + (", ".join(failures) if failures else "meets the bar"))
        rank = (len(failures), -metrics["onset_f1"] if math.isfinite(metrics["onset_f1"]) else 0.0)
        if best is None or rank < best[0]:
            best = (rank, Curated(SeedPreset(name_for(prompt), " ".join(prompt.split()), seed, dict(settings),
                                             metrics), i + 1, failures))
        if not failures:
            break
    return best[1]


def default_settings() -> dict:
    """The pinned settings of a new preset: the generator's current defaults."""
    d = GenerateSettings(mode="t2av").check()  # presets are text-to-AV; check() resolves mode defaults
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(d, k)) for k in SETTING_KEYS)}


def candidates(folder, prompts: Iterable[str] | None) -> list[tuple[str, int, dict]]:
    """(prompt, first seed, settings) to curate: the given prompts at the default settings, else the
    folder's presets (re-measured from their recorded seed and settings), else DEFAULT_PROMPTS."""
    if prompts:
        return [(p, 0, default_settings()) for p in prompts]
    existing = load_presets(folder)
    if existing:
        return [(p.prompt, p.seed, p.settings) for p in existing]
    return [(p, 0, default_settings()) for p in DEFAULT_PROMPTS]


@dataclass
class Check:
    preset: SeedPreset
    measured: dict
    problems: list[str]  # regressions against the recorded metrics


def check_presets(pipe, presets: list[SeedPreset], device: str = "cpu",
                  metrics_fn: MetricsFn | None = None) -> list[Check]:
    """Regenerate every preset and compare its metrics with the recorded ones."""
    out = []
    for p in presets:
        measured = measure(pipe, p.prompt, p.seed, p.settings, device, metrics_fn)
        out.append(Check(p, measured, regressions(p.metrics, measured)))
    return out
