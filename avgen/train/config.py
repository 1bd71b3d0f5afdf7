"""Typed training configuration: one frozen dataclass, named presets, `key=value` overrides.

A run is fully described by its resolved `TrainConfig` (model size, codec, objective, clip spec,
data, optimiser, schedule, logging). The config is written to `RUN_DIR/config.json` and into every
checkpoint, so a run can be resumed, exported or audited from its folder alone (nanoGPT / EDM2).

Overrides use dotted keys into the nested configs and are type-checked against the fields:

    lr=3e-4  batch_size=64  objective.p_drop_prompt=0.2  model.depth=4  spec.duration=2.0
    model=AVDiT-B  codec=mel64        (a nested config set by a preset name)

Unknown keys raise ValueError naming the known ones.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from avgen.data.clip import ClipSpec
from avgen.model.config import CODEC_PRESETS, MODEL_PRESETS, CodecConfig, ModelConfig, ObjectiveConfig
from avgen.util import dumps

LR_SCHEDULES = ("cosine", "constant", "wsd")
EXPORT_DTYPES = ("float32", "float16")  # how `avgen export` may store the weights
# Outputs are x0 tokens: video in [-1, 1], where one 8-bit grey level is 2/255 ~ 0.008, and audio
# features at about unit scale; 1e-2 keeps fp16 rounding below what a written clip can show.
FP16_TOLERANCE = 1e-2


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (the device and paths do not)."""

    # what is trained, on what
    model: ModelConfig = MODEL_PRESETS["AVDiT-S"]
    codec: CodecConfig = CODEC_PRESETS["stft"]
    objective: ObjectiveConfig = ObjectiveConfig()
    spec: ClipSpec = ClipSpec()
    dataset: str = "shapes"  # make_dataset name: talking-digits | shapes | folder:PATH
    data_seed: int = 0  # the dataset's seed: clip g of the run is make_dataset(..., seed=data_seed)[g]
    augment_speed: float = 0.0  # talking-digits training clips: speech speed drawn in [1/(1+a), 1+a] (0 = off)
    augment_shift_px: int = 0  # talking-digits training clips: digit images moved by up to this many pixels
    holdout: float = 0.1  # folder datasets: the share of files held out for validation and judging
    seed: int = 0  # model initialisation and every per-sample draw (noise, t, dropouts)
    # optimisation
    steps: int = 1000
    batch_size: int = 32  # global: summed over processes
    lr: float = 3e-4
    lr_schedule: str = "cosine"  # after warmup: cosine to min_lr_ratio * lr at `steps`, constant, or wsd
    decay_steps: int = 0  # wsd (warmup-stable-decay): flat, then linear to min_lr_ratio * lr over the last N
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01  # on matrices only (nanoGPT): biases, norms, gates are not shrunk
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    ema_decay: float = 0.999  # exported weights are the EMA; its decay ramps up as (1 + s) / (10 + s)
    bf16: bool = True  # bf16 autocast on CUDA (the CPU path always computes in fp32)
    # the loss's noise drawn on the training device per global batch (keyed by seed and position), not per
    # sample in the data workers: two thirds of the bytes a GPU waits for, and 40% of a worker's time;
    # the run then replays only on its kind of device
    noise_on_device: bool = False
    # bookkeeping
    log_every: int = 10
    ckpt_every: int = 200
    keep_last: int = 3  # checkpoints kept on disk
    sample_every: int = 500  # 0 = never; sample clips from the EMA model into RUN_DIR/samples
    num_samples: int = 4
    sample_steps: int = 25
    val_every: int = 0  # 0 = never; the EMA weights' held-out denoising error (avgen.eval.denoise) into metrics
    val_clips: int = 64  # test-split clips it is measured on (the same clips every time)

    def __post_init__(self):
        positive = ("steps", "batch_size", "log_every", "ckpt_every", "keep_last", "num_samples", "sample_steps",
                    "val_clips")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "sample_every", "val_every", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.decay_steps < 0:
            raise ValueError(f"decay_steps must be >= 0, got {self.decay_steps}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1):
            raise ValueError("lr must be positive and min_lr_ratio in [0, 1]")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must lie in [0, 1), got {self.holdout!r}")
        for name in ("beta1", "beta2", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")

    # -- (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _from_dict(cls, d)

    def check(self) -> "TrainConfig":
        """Checks across fields that overrides applied one at a time may pass through (train() runs it)."""
        if self.dataset == "folder:":
            raise ValueError("name the folder of clips to train on: --dataset folder:PATH")
        if self.lr_schedule == "wsd" and not 0 < self.decay_steps <= self.steps - self.warmup_steps:
            raise ValueError(f"lr_schedule wsd needs 0 < decay_steps <= steps - warmup_steps "
                             f"({self.steps - self.warmup_steps}), got {self.decay_steps}")
        return self

    def override(self, assignments: list[str] | dict[str, object]) -> "TrainConfig":
        """A copy with `key=value` strings (or a {dotted key: value} dict) applied in order."""
        items = assignments.items() if isinstance(assignments, dict) else map(split_assignment, assignments)
        cfg = self
        for key, value in items:
            cfg = _set_path(cfg, key.split("."), value, key)
        return cfg


# Named starting points. `tiny` is the smoke test (seconds on a CPU). `shapes-cpu` ends inside 30
# minutes on a 2-core CPU even with one core busy (AVDiT-XS, 3.6 M parameters). `digits-cpu` keeps a
# constant LR after warmup so that a run can be extended with `--resume --steps N` (end it with
# `--set lr_schedule=wsd --set decay_steps=N` for a cooldown). `digits-gpu` is for one H200 (bf16, big
# batch, data workers). What each reached, and how fast: docs/experiments.md.
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(model=MODEL_PRESETS["AVDiT-T"], spec=ClipSpec(duration=1.5, height=8, width=8),
                        steps=8, batch_size=4, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=1,
                        ckpt_every=2, keep_last=2, sample_every=0, num_samples=2, sample_steps=2),
    "shapes-cpu": TrainConfig(dataset="shapes", model=MODEL_PRESETS["AVDiT-XS"], steps=1600, batch_size=32,
                              lr=1e-3, warmup_steps=100, ema_decay=0.995, ckpt_every=100, sample_every=400),
    "digits-cpu": TrainConfig(dataset="talking-digits", steps=20_000, batch_size=32, lr=3e-4,
                              lr_schedule="constant", warmup_steps=200, ema_decay=0.999, ckpt_every=200,
                              sample_every=1000),
    # a user's folder of captioned clips (`--dataset folder:PATH`): the shapes recipe's small network with
    # A2V / V2A as a real share of training, the label probe, and validation on the held-out files
    "folder-cpu": TrainConfig(dataset="folder:", model=MODEL_PRESETS["AVDiT-XS"].replace(label_probe=True),
                              objective=ObjectiveConfig(p_clean=0.25, p_drop_prompt_given=0.5, p_drop_timeline=0.3,
                                                        label_weight=0.1),
                              steps=2000, batch_size=32, lr=1e-3, warmup_steps=100, ema_decay=0.995, ckpt_every=100,
                              sample_every=500, val_every=250, val_clips=32),
    "digits-gpu": TrainConfig(dataset="talking-digits", model=MODEL_PRESETS["AVDiT-B"], steps=50_000,
                              batch_size=256, lr=4e-4, warmup_steps=1000, ema_decay=0.9995, log_every=50,
                              ckpt_every=1000, sample_every=5000, num_samples=8, val_every=250, val_clips=256),
}

# A nested config may be set by a preset name: `model=AVDiT-B`, `codec=mel64`.
NESTED_PRESETS: dict[type, dict[str, object]] = {ModelConfig: MODEL_PRESETS, CodecConfig: CODEC_PRESETS}


def preset(name: str, overrides: list[str] | dict | None = None) -> TrainConfig:
    """A named preset with overrides applied; unknown names raise ValueError."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose one of {', '.join(TRAIN_PRESETS)}")
    return TRAIN_PRESETS[name].override(overrides or [])


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of `cfg.lr` at optimizer step `step` (0-based): linear warmup, then cosine, flat,
    or flat with a linear cooldown over the last `decay_steps` (wsd: a constant-LR run extended with
    `--resume --steps N` can end with a cooldown by resuming with `--set lr_schedule=wsd`)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.lr_schedule == "wsd":
        done = (step + 1 - (cfg.steps - cfg.decay_steps)) / cfg.decay_steps  # <= 0 before the cooldown
        return 1.0 - (1.0 - cfg.min_lr_ratio) * min(1.0, max(0.0, done))
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------- overrides
def split_assignment(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not of the form key=value")
    return key.strip(), value.strip()


def _field_types(cls) -> dict[str, type]:
    # resolved annotations (the modules use `from __future__ import annotations`, so raw ones are strings)
    return typing.get_type_hints(cls)


def _set_path(obj, path: list[str], value, full_key: str):
    """A copy of dataclass `obj` with the field at `path` set (parsed to that field's type)."""
    types = _field_types(type(obj))
    name = path[0]
    if name not in types:
        raise ValueError(f"unknown option {full_key!r}: {type(obj).__name__} has {sorted(types)}")
    if len(path) > 1:
        if not dataclasses.is_dataclass(types[name]):
            raise ValueError(f"option {'.'.join(path[:1])!r} in {full_key!r} has no sub-options")
        new = _set_path(getattr(obj, name), path[1:], value, full_key)
    else:
        new = _parse_value(types[name], value, full_key)
    return dataclasses.replace(obj, **{name: new})


def _parse_value(kind: type, value, key: str):
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        presets = NESTED_PRESETS.get(kind, {})
        if isinstance(value, str) and value in presets:
            return presets[value]
        raise ValueError(f"{key} takes a preset name ({', '.join(presets) or 'none defined'}) "
                         f"or sub-options {key}.NAME=VALUE, got {value!r}")
    if not isinstance(value, str):
        return kind(value)
    try:
        if kind is bool:
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if kind is int:
            as_float = float(value)  # accepts 1e4 for 10000, refuses 2.5
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        return kind(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} is not a valid {kind.__name__}") from None


def _from_dict(cls, d: dict):
    """Rebuild a (nested) dataclass from `asdict` output; unknown keys raise ValueError."""
    types = _field_types(cls)
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown} (a config from another avgen version?)")
    kwargs = {k: _from_dict(types[k], v) if dataclasses.is_dataclass(types[k]) else v for k, v in d.items()}
    return cls(**kwargs)


__all__ = ["TrainConfig", "TRAIN_PRESETS", "LR_SCHEDULES", "preset", "lr_factor", "split_assignment"]
