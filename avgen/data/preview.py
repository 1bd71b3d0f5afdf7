"""Look at clips: one PNG sheet per clip, a strip of frames above the spectrogram on one
time axis, ground-truth events shaded and labelled, detected onsets (if given) drawn as
lines (video: solid, audio: dashed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .clip import Clip
from avgen.util import write_json

from .io import write_mp4


def pyplot():
    """matplotlib's pyplot on the file-only backend. Imported when a figure is drawn, not with this
    module: it takes about a second, and most users of clips draw none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def spectrogram_db(audio: np.ndarray, sr: int, n_fft: int = 256, hop: int | None = None) -> np.ndarray:
    """Log-magnitude STFT in dB (freq, time), Hann window, hop = n_fft/4."""
    hop = hop or n_fft // 4
    x = np.pad(audio.astype(np.float32), (n_fft // 2, n_fft // 2))
    n = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft).astype(np.float32), axis=1)).T
    return 20 * np.log10(spec + 1e-5)


def render_sheet(clip: Clip, path, detected: dict | None = None, title: str | None = None) -> Path:
    plt = pyplot()
    dur = clip.duration
    strip = np.concatenate(list(clip.frames), axis=1)  # (H, T*W, C)
    strip = strip[..., 0] if strip.shape[2] == 1 else strip
    fig, (ax_v, ax_a) = plt.subplots(2, 1, figsize=(max(8.0, dur * 4.5), 4.2), sharex=True,
                                     gridspec_kw={"height_ratios": [1, 2.2]})
    ax_v.imshow(np.clip(strip, 0, 1), extent=(0, dur, 0, 1), aspect="auto", cmap="gray", vmin=0, vmax=1,
                interpolation="nearest")
    ax_v.set_yticks([])
    ax_v.set_ylabel("video")
    db = spectrogram_db(clip.audio, clip.sample_rate)
    ax_a.imshow(db, origin="lower", aspect="auto", extent=(0, dur, 0, clip.sample_rate / 2), cmap="magma",
                vmin=db.max() - 70, vmax=db.max())
    ax_a.set_ylabel("Hz")
    ax_a.set_xlabel("time (s)")
    for e in clip.events:
        for ax in (ax_v, ax_a):
            ax.axvspan(e.start_s, e.end_s, color="cyan", alpha=0.18, lw=0)
            ax.axvline(e.start_s, color="cyan", lw=1)
        ax_a.text((e.start_s + e.end_s) / 2, clip.sample_rate * 0.47, e.label, color="cyan",
                  ha="center", va="top", fontsize=11, weight="bold")
    for key, style in (("video_onsets_s", "-"), ("audio_onsets_s", "--")):
        for t in (detected or {}).get(key, []):
            for ax in (ax_v, ax_a):
                ax.axvline(t, color="lime" if style == "-" else "yellow", ls=style, lw=1.2)
    ax_a.set_xlim(0, dur)
    fig.suptitle(title if title is not None else f"prompt: {clip.prompt!r}   events: "
                 + ", ".join(f"{e.label} {e.start_s:.3f}-{e.end_s:.3f}s" for e in clip.events), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_preview(dataset, n: int, out_dir, scale: int = 8, start: int = 0) -> list[Path]:
    """Write clips start..start+n-1 of a dataset as mp4 + PNG sheet (+ clip.json); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(start, start + n):
        clip = dataset[i]
        stem = out / f"clip_{i:04d}"
        write_mp4(clip, stem.with_suffix(".mp4"), scale=scale)
        render_sheet(clip, stem.with_suffix(".png"))
        write_json(stem.with_suffix(".json"), {"prompt": clip.prompt, "events": clip.truth(), "meta": clip.meta})
        written += [stem.with_suffix(".mp4"), stem.with_suffix(".png")]
    return written
