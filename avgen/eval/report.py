"""What `avgen eval` reads and writes besides the measurements: the files to evaluate (and their
prompts), the terminal tables, the JSON report (strict JSON: an undefined figure is null) and the plots."""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from avgen.data.io import VIDEO_EXTS
from avgen.data.preview import pyplot
from avgen.eval.analysis import MEDIA, POOLED, SCALARS, Analysis, EvalConfig, Item, Report
from avgen.util import write_json as write_strict_json

def file_items(paths: list[str | Path], prompts: dict[str, str] | None = None) -> list[Item]:
    """Files and folders (searched recursively for video files) -> items, prompts from a manifest."""
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
    lines = [f"{'metric':<28}{'mean':>10}{'median':>10}   {'95% CI':<20}{'n':>6}"]
    for key in SCALARS:
        if key in summary:
            s = summary[key]
            ci = f"[{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}]"
            undefined = f"  ({s['n_undefined']} undefined)" if s["n_undefined"] else ""
            lines.append(f"{key:<28}{fmt(s['mean']):>10}{fmt(s['median']):>10}   {ci:<20}{s['n']:>6}{undefined}")
    for key in ("median_abs_offset_ms", *POOLED):
        if key in summary:
            s = summary[key]
            ci = f"[{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}]"
            lines.append(f"{key:<28}{fmt(s['value']):>10}{'':>10}   {ci:<20}{s.get('n_clips', ''):>6}")
    for m in MEDIA:
        for kind in ("fd", "kid"):
            key = f"{kind}_{m}"
            if key in summary:
                fl = summary[f"{key}_floor"]
                lines.append(f"{key:<28}{fmt(summary[key]):>10}   real-vs-real floor {fmt(fl['mean'])} "
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
    """The report (and `extra` at the top level) as strict JSON: an undefined figure (NaN) is null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_strict_json(path, {**(extra or {}), **report.to_json()})


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



__all__ = ["WorkDir", "clip_table", "config_json", "file_items", "fmt", "format_table", "lookup_prompt",
           "plot_envelopes", "plot_offsets", "pyplot", "read_manifest", "write_json"]
