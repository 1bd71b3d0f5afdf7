"""Make a folder of captioned clips to train on, as a user's own would be: real containers (H.264 + AAC in
mp4, VP9 + Opus in webm), 64x64 RGB at 25 fps, 44.1 kHz stereo, one caption file per clip, and events at
free times (not on any frame grid). Nothing here is `shapes`: other drawings, colours that vary, sounds
with their own envelopes, other timings.

    python scripts/make_example_folder.py --out examples/toys --n 400            # the README guide's folder
    python scripts/make_example_folder.py --out examples/sky --n 400 --kinds sky  # a second vocabulary

Each clip holds 1-3 events; an event is one kind's drawing on screen exactly while its sound plays. The
caption `NAME.txt` lists the kinds in order ("bell drum"), which is all a user would write down.
"""
from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SIZE, FPS, RATE, SECONDS = 64, 25, 44100, 3.0
MIN_GAP_S, MIN_LEN_S, MAX_LEN_S = 0.15, 0.3, 0.9


# ----------------------------------------------------------------------------- drawings (size x size masks)
def ring(y, x, r):
    d = np.hypot(y, x)
    return np.clip(1.5 - np.abs(d - 0.75 * r) / (0.12 * r), 0, 1)


def block(y, x, r):
    return ((np.abs(y) < 0.7 * r) & (np.abs(x) < 0.7 * r)).astype(np.float32)


def spike(y, x, r):  # a triangle pointing up
    return ((y > -0.7 * r) & (y < 0.6 * r) & (np.abs(x) < (0.6 * r - y) * 0.6)).astype(np.float32)


def star(y, x, r):
    ang, d = np.arctan2(y, x), np.hypot(y, x)
    return (d < r * (0.45 + 0.35 * np.cos(5 * ang))).astype(np.float32)


def moon(y, x, r):
    return ((np.hypot(y, x) < 0.8 * r) & (np.hypot(y, x - 0.35 * r) > 0.65 * r)).astype(np.float32)


def cloud(y, x, r):
    m = np.zeros_like(y)
    for cy, cx, s in ((0.1, -0.35, 0.45), (-0.15, 0.05, 0.55), (0.1, 0.4, 0.42)):
        m = np.maximum(m, (np.hypot(y - cy * r, x - cx * r) < s * r).astype(np.float32))
    return m


def dot(y, x, r):
    return (np.hypot(y, x) < 0.3 * r).astype(np.float32)


# ----------------------------------------------------------------------------- sounds (n samples, mono)
def bell_sound(n, rng):
    t = np.arange(n) / RATE
    f = rng.uniform(600, 720)
    x = sum(a * np.sin(2 * np.pi * f * k * t) for k, a in ((1, 1.0), (2.76, 0.5), (5.4, 0.25)))
    return x * np.exp(-t * rng.uniform(3, 5))


def drum_sound(n, rng):
    t = np.arange(n) / RATE
    f = 60 + 110 * np.exp(-t * 18)
    body = np.sin(2 * np.pi * np.cumsum(f) / RATE) * np.exp(-t * rng.uniform(4, 7))
    return body + 0.3 * rng.standard_normal(n) * np.exp(-t * 40)


def whistle_sound(n, rng):
    t = np.arange(n) / RATE
    f0 = rng.uniform(1100, 1300)
    f = f0 * 2 ** (t / max(t[-1], 1e-3))  # up an octave over the event
    return np.sin(2 * np.pi * np.cumsum(f) / RATE) * (1 - np.exp(-t * 40))


def buzz_sound(n, rng):
    t = np.arange(n) / RATE
    f = rng.uniform(200, 240)
    return 0.6 * (2 * ((f * t) % 1) - 1)


def hum_sound(n, rng):
    t = np.arange(n) / RATE
    return np.sin(2 * np.pi * (330 * t + 3 * np.sin(2 * np.pi * 5 * t)))


def whoosh_sound(n, rng):
    noise = rng.standard_normal(n + 64)
    smooth = np.convolve(noise, np.ones(16) / 16, mode="same")[:n]  # a low-passed hiss
    t = np.arange(n) / n
    return 1.5 * smooth * np.sin(np.pi * t)


def click_sound(n, rng):
    x = np.zeros(n)
    period = int(RATE / rng.uniform(18, 24))
    for k in range(0, n - 40, period):  # whole clicks only
        x[k:k + 40] = np.hanning(80)[40:] * rng.choice([-1, 1])
    return x


KINDS = {  # name -> (drawing, sound, hue range)
    "toys": {"bell": (ring, bell_sound, (0.10, 0.17)), "drum": (block, drum_sound, (0.95, 1.05)),
             "whistle": (spike, whistle_sound, (0.55, 0.68))},
    "sky": {"star": (star, buzz_sound, (0.12, 0.18)), "moon": (moon, hum_sound, (0.0, 1.0)),
            "cloud": (cloud, whoosh_sound, (0.5, 0.6)), "dot": (dot, click_sound, (0.8, 0.95))},
}


def hsv(h: float, s: float, v: float) -> np.ndarray:
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def layout(rng, k: int) -> list[tuple[float, float]] | None:
    """k (start, end) in seconds at free times, at least MIN_GAP_S apart, inside the clip."""
    lengths = rng.uniform(MIN_LEN_S, MAX_LEN_S, k)
    slack = SECONDS - 0.1 - lengths.sum() - (k - 1) * MIN_GAP_S
    if slack < 0:
        return None
    cuts = np.sort(rng.uniform(0, slack, k))
    starts, t = [], 0.05
    for i, n in enumerate(lengths):
        t += (cuts[i] - (cuts[i - 1] if i else 0.0)) + (MIN_GAP_S if i else 0.0)
        starts.append((t, t + n))
        t += n
    return starts


def make_clip(rng, kinds: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(frames (T, 64, 64, 3) uint8, audio (S, 2) float32, labels in order)."""
    names = list(kinds)
    while True:
        labels = [names[i] for i in rng.integers(0, len(names), rng.integers(1, 4))]
        spans = layout(rng, len(labels))
        if spans is not None:
            break
    n_frames, n_samples = int(SECONDS * FPS), int(SECONDS * RATE)
    background = rng.uniform(0.0, 0.12)
    frames = np.full((n_frames, SIZE, SIZE, 3), background, np.float32)
    frames += rng.normal(0, 0.02, frames.shape).astype(np.float32)  # a little sensor noise on every frame
    audio = rng.normal(0, 0.003, (n_samples, 2)).astype(np.float32)  # and a little hiss
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    for label, (a, b) in zip(labels, spans):
        draw, sound, hues = kinds[label]
        r = SIZE * rng.uniform(0.25, 0.38)
        cy, cx = SIZE / 2 + rng.uniform(-6, 6), SIZE / 2 + rng.uniform(-6, 6)
        colour = hsv(rng.uniform(*hues) % 1.0, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
        mask = draw(y - cy, x - cx, r)[..., None] * colour
        shown = (np.arange(n_frames) + 0.5) / FPS
        on = (shown >= a) & (shown < b)  # the frames whose middle falls in the event
        frames[on] = np.maximum(frames[on], mask)
        i0, i1 = int(a * RATE), int(b * RATE)
        s = sound(i1 - i0, rng)
        fade = min(len(s) // 2, int(0.005 * RATE))
        ramp = np.linspace(0, 1, fade)
        s[:fade] *= ramp
        s[-fade:] *= ramp[::-1]
        s = rng.uniform(0.3, 0.7) * s / (np.abs(s).max() + 1e-9)
        pan = rng.uniform(0.7, 1.0, 2)
        audio[i0:i1] += s[:, None] * pan[None]
    return (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8), audio, labels


def write_clip(path: Path, frames: np.ndarray, audio: np.ndarray) -> None:
    webm = path.suffix == ".webm"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libvpx-vp9" if webm else "libx264", rate=FPS)
        vs.width = vs.height = SIZE
        vs.pix_fmt = "yuv420p"
        if not webm:
            vs.options = {"crf": "18", "preset": "fast"}
        as_ = out.add_stream("libopus" if webm else "aac", rate=48000 if webm else RATE)
        as_.layout = "stereo"
        for f in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if webm:  # Opus takes 48 kHz: resample in PyAV on the way in
            resampler = av.AudioResampler(format="flt", layout="stereo", rate=48000)
        block = 1024
        for k in range(0, len(audio), block):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[k:k + block].T), format="fltp",
                                            layout="stereo")
            fr.sample_rate = RATE
            fr.pts, fr.time_base = k, Fraction(1, RATE)
            for f in (resampler.resample(fr) if webm else [fr]):
                for p in as_.encode(f):
                    out.mux(p)
        if webm:
            for f in resampler.resample(None):
                for p in as_.encode(f):
                    out.mux(p)
        for p in as_.encode():
            out.mux(p)


def make_folder(out, n: int, kinds: str = "toys", seed: int = 0) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = KINDS[kinds]
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        frames, audio, labels = make_clip(rng, table)
        stem = out / f"{kinds}_{i:04d}"
        write_clip(stem.with_suffix(".webm" if i % 2 else ".mp4"), frames, audio)
        stem.with_suffix(".txt").write_text(" ".join(labels) + "\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, help="folder to write (created)")
    p.add_argument("--n", type=int, default=400, help="clips (default: %(default)s)")
    p.add_argument("--kinds", choices=sorted(KINDS), default="toys", help="which vocabulary (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.n < 1:
        p.error("--n must be at least 1")
    print(make_folder(args.out, args.n, args.kinds, args.seed))


if __name__ == "__main__":
    main()
