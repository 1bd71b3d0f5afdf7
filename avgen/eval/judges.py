"""Two small judges trained here: which digit is on screen, and which digit is said.

No pretrained network can be downloaded, so the semantic metrics (digit accuracy, AV
agreement) and the Frechet features rest on two CNNs trained on the train splits only
(MNIST t10k indices < 8000, FSDD takes 5-49). Both are the same network (`JudgeNet`) over a
single-channel 2-D input, configured by a `JudgeConfig`:
  image:  the mean of an event's frames, 32 x 32, scaled to a peak of 1;
  speech: a log-mel spectrogram (40 bands x 64 frames of 10 ms) of the event's sound at
          8 kHz, from 20 ms before its onset, cut at its end, in dB below its own peak.
Each ends in a 16-d embedding (the Frechet feature space) and a 10-way classifier.
Augmentations (small shifts / rotations / blur / noise; time shift, speed, noise) make them
hold on decoded and generated clips. Weights: safetensors + a JSON config, < 1 MiB each.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from avgen.data import make_dataset
from avgen.data.clip import ClipSpec
from avgen.data.io import decode_av, write_mp4
from avgen.data.sources import fsdd_split, list_fsdd, mnist_split_indices, read_mnist, read_wav, resolve_data_root
from avgen.data.talking_digits import place_digit, voiced_segment
from avgen.model.weights import CheckpointError, check_weights_file
from avgen.signal.onsets import AVSignal, Detected, mel_spectrogram, resample
from avgen.util import write_json

SPEECH_RATE = 8000
SPEECH_N_FFT, SPEECH_HOP, SPEECH_MELS, SPEECH_FRAMES = 256, 80, 40, 64  # 32 ms window, 10 ms hop, 0.64 s
SPEECH_PRE_S = 0.02  # the window opens a little before the detected onset
SPEECH_FLOOR_DB = 80.0
IMAGE_SIDE = 32
LABELS = tuple(str(d) for d in range(10))
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "weights" / "judges"


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class JudgeConfig:
    name: str  # "image" or "speech"
    input_hw: tuple[int, int]
    channels: tuple[int, int, int] = (16, 32, 64)
    embed_dim: int = 16  # the Frechet feature dimension: N >= 10 x dim at N = 200-500 events
    dropout: float = 0.1
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    labels: tuple[str, ...] = LABELS

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "JudgeConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("input_hw", "channels", "labels"):
            known[k] = tuple(known[k])
        return cls(**known)


IMAGE = JudgeConfig("image", (IMAGE_SIDE, IMAGE_SIDE), epochs=12)
SPEECH = JudgeConfig("speech", (SPEECH_MELS, SPEECH_FRAMES), epochs=20)
PRESETS = {"image": IMAGE, "speech": SPEECH}


def tiny(cfg: JudgeConfig) -> JudgeConfig:
    """A seconds-long version of a preset, for tests."""
    return replace(cfg, channels=(4, 8, 8), embed_dim=8, epochs=1)


# ----------------------------------------------------------------------------- the network
def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class JudgeNet(nn.Module):
    """Three conv stages (two pooled) -> global mean -> 16-d embedding -> 10 logits."""
    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        self.cfg = cfg
        c1, c2, c3 = cfg.channels
        self.features = nn.Sequential(
            conv_block(1, c1), conv_block(c1, c1), nn.MaxPool2d(2),
            conv_block(c1, c2), conv_block(c2, c2), nn.MaxPool2d(2),
            conv_block(c2, c3))
        self.embedding = nn.Linear(c3, cfg.embed_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.embed_dim, len(cfg.labels)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W) inputs -> (B, embed_dim) features."""
        h = self.features(rearrange(x, "b h w -> b 1 h w"))  # (B, c3, H/4, W/4)
        return self.embedding(h.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


# ----------------------------------------------------------------------------- inputs from clips
def image_input(frames: np.ndarray) -> np.ndarray:
    """An event's grey frames (T, H, W) in [0, 1] -> their mean, centre-cropped square, area-
    resized to 32 x 32 and scaled to a peak of 1 (a dim digit is still a digit)."""
    mean = frames.mean(axis=0).astype(np.float32)
    h, w = mean.shape
    side = min(h, w)
    mean = mean[(h - side) // 2: (h - side) // 2 + side, (w - side) // 2: (w - side) // 2 + side]
    if side != IMAGE_SIDE:
        mean = np.asarray(Image.fromarray(mean, mode="F").resize((IMAGE_SIDE, IMAGE_SIDE), Image.BOX), np.float32)
    return mean / max(float(mean.max()), 1e-3)


def speech_input(sound: np.ndarray, sr: int) -> np.ndarray:
    """An event's sound (from 20 ms before its onset to its end) -> (40, 64) log-mel in [0, 1]:
    dB below the segment's own peak (so loudness does not matter), floored at -80 dB."""
    x = resample(sound, sr, SPEECH_RATE)[: SPEECH_FRAMES * SPEECH_HOP]
    mel = mel_spectrogram(x, SPEECH_RATE, SPEECH_N_FFT, SPEECH_HOP, SPEECH_MELS, 50.0, 3800.0, SPEECH_FRAMES)
    mel = mel.T  # (mels, frames)
    db = 20.0 * np.log10(mel + 1e-5 * mel.max() + 1e-12)  # a floor relative to the peak: gain-free
    db = np.clip(db - db.max(), -SPEECH_FLOOR_DB, 0.0)
    return (db / SPEECH_FLOOR_DB + 1.0).astype(np.float32)


def event_frames(frames: np.ndarray, frame_times: np.ndarray, fps: float, ev: Detected) -> np.ndarray:
    """The frames shown during an event (at least the one at its onset)."""
    centres = frame_times + 0.5 / fps
    inside = np.flatnonzero((centres >= ev.onset_s) & (centres < ev.end_s))
    if not len(inside):
        inside = [int(np.clip(np.searchsorted(frame_times, ev.onset_s, side="right") - 1, 0, len(frames) - 1))]
    return frames[inside]


def event_sound(audio: np.ndarray, sr: int, ev: Detected) -> np.ndarray:
    a = max(0, int(round((ev.onset_s - SPEECH_PRE_S) * sr)))
    b = min(len(audio), int(round((ev.end_s + SPEECH_PRE_S) * sr)), a + int(SPEECH_FRAMES * SPEECH_HOP / SPEECH_RATE * sr))
    return audio[a:b]


# ----------------------------------------------------------------------------- applying
@dataclass
class Reading:
    labels: list[str]
    probs: np.ndarray  # (N, 10)
    embeddings: np.ndarray  # (N, embed_dim)


class Judge:
    """A trained JudgeNet in eval mode, applied to batches of inputs. `info`: what its JSON records
    beside the config (how and on what it was trained, its held-out accuracy)."""

    def __init__(self, net: JudgeNet, info: dict | None = None):
        self.net = net.eval()
        self.cfg = net.cfg
        self.info = info or {}

    @property
    def accuracy(self) -> float | None:
        """Its recorded accuracy on held-out examples (None when none is recorded)."""
        for key in ("heldout_accuracy", "test_accuracy_mp4", "test_accuracy_source"):
            value = self.info.get(key)
            value = value.get("accuracy") if isinstance(value, dict) else value
            if isinstance(value, (int, float)):
                return float(value)
        return None

    @torch.no_grad()
    def __call__(self, inputs: list[np.ndarray]) -> Reading:
        if not inputs:
            return Reading([], np.zeros((0, len(self.cfg.labels))), np.zeros((0, self.cfg.embed_dim)))
        x = torch.from_numpy(np.stack(inputs).astype(np.float32))
        emb = self.net.embed(x)
        probs = torch.softmax(self.net.head(emb), dim=1).numpy()
        return Reading([self.cfg.labels[i] for i in probs.argmax(1)], probs, emb.numpy())

    def save(self, out_dir, extra: dict | None = None) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(out / f"{self.cfg.name}.safetensors"))
        info = {"config": self.cfg.to_json(), **(extra or {})}
        write_json(out / f"{self.cfg.name}.json", info)
        return out

    @classmethod
    def load(cls, out_dir, name: str) -> "Judge":


        d = Path(out_dir)
        cfg_path, w_path = d / f"{name}.json", d / f"{name}.safetensors"
        if not cfg_path.is_file() or not w_path.is_file():
            raise FileNotFoundError(f"no trained {name} judge in {d} (expected {cfg_path.name} and {w_path.name}); "
                                    "train one with `avgen judges train`")
        try:
            info = json.loads(cfg_path.read_text())
            net = JudgeNet(JudgeConfig.from_json(info.pop("config")))
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
            raise CheckpointError(f"{cfg_path}: not a usable judge config ({' '.join(str(e).split())})") from None
        check_weights_file(w_path, {k: tuple(v.shape) for k, v in net.state_dict().items()})  # names the file
        net.load_state_dict(load_file(str(w_path)), strict=True)
        return cls(net, info)


@dataclass
class Judges:
    image: Judge
    speech: Judge

    @classmethod
    def load(cls, path=None, min_accuracy: float | None = None) -> "Judges":
        """The judges in `path` (default: the shipped digit judges). With `min_accuracy`, judges whose
        recorded held-out accuracy is below it are refused: their readings would not mean anything."""
        d = Path(path) if path else DEFAULT_DIR
        judges = cls(Judge.load(d, "image"), Judge.load(d, "speech"))
        if min_accuracy is not None:
            for name, judge in (("picture", judges.image), ("sound", judges.speech)):
                if judge.accuracy is not None and judge.accuracy < min_accuracy:
                    raise ValueError(f"the {name} judge in {d} reads only {judge.accuracy:.0%} of its held-out events "
                                     f"right (under {min_accuracy:.0%}): its readings would not mean anything; "
                                     "train it on more, or more distinct, clips")
        return judges


# ----------------------------------------------------------------------------- training data
def image_examples(data_root, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits of a split placed as the dataset places them: (N, 32, 32) float, labels."""
    images, labels = read_mnist(resolve_data_root(data_root))
    idx = mnist_split_indices(len(labels), split)
    spec = ClipSpec()
    x = np.stack([place_digit(images[i], spec)[..., 0] for i in idx])
    return x.astype(np.float32), labels[idx].astype(np.int64)


def speech_examples(data_root, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """FSDD recordings of a split, trimmed to their voiced part at 8 kHz as the dataset does."""
    spec = ClipSpec(sample_rate=SPEECH_RATE)
    recs = [r for r in list_fsdd(resolve_data_root(data_root)) if fsdd_split(r) == split]
    sounds = [voiced_segment(*read_wav(r.path), spec) for r in recs]
    return sounds, np.array([r.digit for r in recs], np.int64)


def augment_images(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(B, 32, 32): random rotation (+-12 deg), scale (0.9-1.1), shift (+-2.5 px), blur, dimming,
    noise; then the inference-time scaling to a peak of 1."""
    b = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=g)  # noqa: E731
    ang, scale = u(-0.21, 0.21), u(0.9, 1.1)
    tx, ty = u(-2.5, 2.5) / 16, u(-2.5, 2.5) / 16  # affine_grid works in [-1, 1] units
    theta = torch.stack([torch.stack([torch.cos(ang) / scale, -torch.sin(ang) / scale, tx], 1),
                         torch.stack([torch.sin(ang) / scale, torch.cos(ang) / scale, ty], 1)], 1)
    img = rearrange(x, "b h w -> b 1 h w")
    img = F.grid_sample(img, F.affine_grid(theta, list(img.shape), align_corners=False), align_corners=False)
    blur = torch.tensor([0.25, 0.5, 0.25])
    blurred = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), (blur[:, None] * blur[None, :])[None, None])
    use_blur = (torch.rand(b, generator=g) < 0.3).float()[:, None, None, None]
    img = use_blur * blurred + (1 - use_blur) * img
    img = img * u(0.5, 1.0)[:, None, None, None] + torch.randn(img.shape, generator=g) * u(0.0, 0.04)[:, None, None, None]
    img = img.clamp(0, 1)[:, 0]
    return img / img.amax(dim=(1, 2), keepdim=True).clamp_min(1e-3)


def augment_sound(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speed (+-7 %, i.e. resampling jitter), onset shift (-15..+30 ms), noise (20-50 dB SNR)."""
    speed = rng.uniform(0.93, 1.07)
    x = np.interp(np.arange(0, len(x) - 1, speed), np.arange(len(x)), x).astype(np.float32)
    shift = int(rng.uniform(-0.015, 0.03) * SPEECH_RATE)
    x = x[-shift:] if shift < 0 else np.concatenate([np.zeros(shift, np.float32), x])
    x = np.concatenate([x, np.zeros(int(rng.uniform(0.0, 0.05) * SPEECH_RATE), np.float32)])
    rms = float(np.sqrt(np.mean(x ** 2))) + 1e-8
    noise = rng.standard_normal(len(x)).astype(np.float32) * rms * 10 ** (-rng.uniform(20, 50) / 20)
    return x + noise


def speech_inputs(sounds: list[np.ndarray]) -> np.ndarray:
    """Voiced segments -> judge inputs, opened SPEECH_PRE_S before the onset as `event_sound` does."""
    lead = np.zeros(int(SPEECH_PRE_S * SPEECH_RATE), np.float32)
    return np.stack([speech_input(np.concatenate([lead, s]), SPEECH_RATE) for s in sounds])


# ----------------------------------------------------------------------------- training
@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def fit(cfg: JudgeConfig, n_train: int, batch_fn: Callable[[np.ndarray, int], tuple[torch.Tensor, torch.Tensor]],
        log_every: int = 0) -> tuple[Judge, TrainLog]:
    """Train a JudgeNet: AdamW, one-cycle cosine schedule, label smoothing 0.05.

    `batch_fn(indices, step)` returns an augmented (inputs, labels) batch; every random draw
    derives from (cfg.seed, step), so a run is reproducible.
    """
    torch.manual_seed(cfg.seed)
    net = JudgeNet(cfg)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    log, t0, step = TrainLog(), time.time(), 0
    net.train()
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n_train)
        for b in range(steps_per_epoch):
            x, y = batch_fn(order[b * cfg.batch_size:(b + 1) * cfg.batch_size], step)
            loss = F.cross_entropy(net(x), y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            log.losses.append(loss.item())
            step += 1
        if log_every and (epoch + 1) % log_every == 0:
            print(f"  {cfg.name} epoch {epoch + 1}/{cfg.epochs}: loss {np.mean(log.losses[-steps_per_epoch:]):.3f}",
                  flush=True)
    log.seconds = time.time() - t0
    return Judge(net), log


def train_image_judge(data_root=None, cfg: JudgeConfig = IMAGE, limit: int | None = None,
                      log_every: int = 0) -> tuple[Judge, TrainLog]:
    x, y = image_examples(data_root, "train")
    x, y = torch.from_numpy(x[:limit]), torch.from_numpy(y[:limit])

    def batch(idx, step):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return augment_images(x[idx], g), y[idx]

    return fit(cfg, len(y), batch, log_every)


def train_speech_judge(data_root=None, cfg: JudgeConfig = SPEECH, limit: int | None = None,
                       log_every: int = 0) -> tuple[Judge, TrainLog]:
    sounds, y = speech_examples(data_root, "train")
    sounds, y = sounds[:limit], torch.from_numpy(y[:limit])

    def batch(idx, step):
        rng = np.random.default_rng([cfg.seed, step])
        inputs = speech_inputs([augment_sound(sounds[i], rng) for i in idx])
        return torch.from_numpy(inputs), y[idx]

    return fit(cfg, len(y), batch, log_every)


def accuracy(judge: Judge, inputs: np.ndarray, labels: np.ndarray) -> float:
    read = judge(list(inputs))
    return float(np.mean(np.array([int(lab) for lab in read.labels]) == labels))


def accuracy_on_mp4(judges: Judges, n_clips: int = 150, seed: int = 0, data_root=None, work_dir=None) -> dict:
    """Both judges' accuracy on Talking Digits test clips written to mp4 (H.264 + AAC) and
    decoded back: each ground-truth event read as the suite reads a detected one (its frames'
    mean; its sound from 20 ms before its start). This measures the judges, not the detector."""
    ds = make_dataset("talking-digits", split="test", seed=seed, data_root=data_root)
    right = {"image": 0, "speech": 0}
    total = 0
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for i in range(n_clips):
            clip = ds[i]
            sig = AVSignal.from_decoded(decode_av(write_mp4(clip, Path(tmp) / "clip.mp4")))
            events = [Detected(e.start_s, e.end_s, 0.0) for e in clip.events]
            truth = [e.label for e in clip.events]
            seen = judges.image([image_input(event_frames(sig.frames, sig.frame_times, sig.fps, ev)) for ev in events])
            heard = judges.speech([speech_input(event_sound(sig.audio, sig.sample_rate, ev), sig.sample_rate)
                                   for ev in events])
            right["image"] += sum(a == b for a, b in zip(seen.labels, truth))
            right["speech"] += sum(a == b for a, b in zip(heard.labels, truth))
            total += len(truth)
    return {"image": right["image"] / total, "speech": right["speech"] / total, "events": total, "clips": n_clips}


def split_accuracy(judge: Judge, name: str, data_root=None) -> float:
    """Accuracy on the whole test split, read from the source files (MNIST t10k >= 8000 placed
    as in a clip; FSDD takes 0-4 trimmed as in a clip)."""
    if name == "image":
        x, y = image_examples(data_root, "test")
        return accuracy(judge, x, y)
    sounds, y = speech_examples(data_root, "test")
    return accuracy(judge, speech_inputs(sounds), y)
