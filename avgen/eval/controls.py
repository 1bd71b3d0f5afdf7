"""Dataset controls: real clips rendered, optionally altered, and written to mp4 for the suite to read.
They prove the metrics: real clips score at the ceiling, audio shifted by k frames moves the offset by
k frames, swapped or scattered audio falls to the floor, and a clip through the model's codec (or
re-noised and denoised by the model) shows what the representation (or the model) keeps."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avgen.data import make_dataset
from avgen.data.clip import Clip
from avgen.data.events import layout
from avgen.data.io import write_mp4
from avgen.eval.analysis import Item, Truth
from avgen.model.codec import AVCodec
from avgen.model.pipeline import load_pipeline
from avgen.model.transformer import AVDiT

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


def codec_of(weights) -> AVCodec:
    """The fixed codec of the model at `weights` (its stored config; the network is not loaded)."""
    try:  # the same reader as the pipeline and the weights check
        config = AVDiT.load_config(Path(weights) / "transformer", local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{weights} holds no usable transformer/config.json (give a model weights folder): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return AVCodec.from_config(config)


def renoise_model(control: Control):
    """The pipeline of the weights that `control.codec` names (for `control.renoise`), loaded once."""
    pipe = load_pipeline(control.codec)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def codec_clip(clip: Clip, codec) -> Clip:
    """Both modalities encoded to the model's tokens and decoded back, on the clip's own events:
    any clip the model could make is at best this. Refuses a codec built for another clip format."""
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
    out = pipe(clip.prompt, init_video=clip.frames, init_audio=clip.audio, strength=strength,
               generator=torch.Generator().manual_seed(seed), postfilter=False)
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
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    codec = None  # loaded once for all clips: the pipeline for renoise, else the codec alone
    if control.codec:
        codec = renoise_model(control) if control.renoise is not None else codec_of(control.codec)
    # through a model's codec, the clips are rendered at its clip format (a folder read in RGB for an RGB model)
    spec = None if codec is None else (codec.codec.spec if control.renoise is not None else codec.spec)
    ds = make_dataset(name, split=split, seed=seed, data_root=data_root, spec=spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(n):
        clip, truth = control_clip(ds, first_index + k, control, n, seed, codec)
        path = write_mp4(clip, out_dir / f"{name}_{split}_{first_index + k:05d}.mp4")
        items.append(Item(path, clip.prompt, truth))
    return items




__all__ = ["Control", "codec_clip", "codec_of", "control_clip", "corrupt_clip", "dataset_items", "renoise_model",
           "renoised_clip", "scatter_events", "shift_clip"]
