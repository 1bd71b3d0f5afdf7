"""Typed configuration of the joint model: network sizes, the token codec, and how both
travel with the weights.

A weights folder must rebuild everything from files alone (nanoGPT's rule). The
transformer's diffusers config (`transformer/config.json`) therefore carries, besides the
network hyper-parameters, three pieces of metadata the network itself never reads:
`clip_spec` (the `ClipSpec` the model was trained at), `codec` (the `CodecConfig` that turns
clips into tokens and back) and `vocab` (the prompt labels, in id order). `AVCodec`,
`encode_prompts` and the pipeline read them back from `transformer.config`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, asdict

from avgen.data.clip import ClipSpec


def _replace_checked(cfg, overrides: dict):
    """`dataclasses.replace` that names unknown keys instead of raising a bare TypeError."""
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {type(cfg).__name__} option(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(cfg, **overrides)


@dataclass(frozen=True)
class CodecConfig:
    """Fixed (not learned) map between a clip and its tokens; one token per video frame per modality.

    Audio: magnitude STFT, power-law compressed (|X|**power), then `(c - audio_offset) / audio_scale`.
    The affine constants were measured on Talking Digits train clips (mean / std of the compressed
    magnitudes; `python -m avgen.model.codec --measure` prints them again) so tokens are about unit
    scale, like the noise they are mixed with.
    """

    frames_per_token: int = 1  # video frames (and the same span of audio) per token
    stft_per_frame: int = 4  # STFT hops per video frame: hop = samples_per_frame / stft_per_frame
    n_fft: int = 256
    n_mels: int = 0  # 0 = linear-frequency STFT bins (n_fft // 2 + 1); > 0 = mel bands
    power: float = 0.3  # magnitude compression exponent
    audio_offset: float = 0.142  # subtracted from |X|**power
    audio_scale: float = 0.310  # then divided by this
    griffin_lim_iters: int = 64
    griffin_lim_momentum: float = 0.99

    def __post_init__(self):
        for name in ("frames_per_token", "stft_per_frame", "n_fft", "griffin_lim_iters"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"CodecConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.n_mels < 0:
            raise ValueError(f"CodecConfig.n_mels must be >= 0, got {self.n_mels!r}")
        if not (self.power > 0 and self.audio_scale > 0):
            raise ValueError("CodecConfig.power and audio_scale must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CodecConfig":
        return _replace_checked(cls(), dict(d))

    def replace(self, **overrides) -> "CodecConfig":
        return _replace_checked(self, overrides)


# The FFN's activation, by its config name -> nn.GELU(approximate=...). "gelu_tanh" is what every
# model made before `ModelConfig.mlp_activation` existed was trained with. "gelu" (erf) is the same
# curve to within 5e-4 and 2.4-3x faster on this project's CPU, whose tanh kernel is slow: 193 / 80 us
# at the demo's (2, 48, 1024), 3.0 / 1.0 ms at training's (32, 48, 1024).
MLP_ACTIVATIONS = {"gelu_tanh": "tanh", "gelu": "none"}
KEYLESS_MLP_ACTIVATION = "gelu_tanh"  # what a model or run config without `mlp_activation` means


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of `AVDiT` that do not depend on the data."""

    hidden_size: int = 256
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    # Temporal RoPE on seconds: rotation periods spaced geometrically between these two values
    # (the shortest resolves adjacent 16 fps frames, the longest exceeds any clip we make).
    rope_min_period_s: float = 0.125
    rope_max_period_s: float = 32.0
    # Every token's AdaLN input also carries the number of labels in the prompt (0 = null prompt).
    # Without it the model must count prompt tokens through attention, which averages them: the
    # step-8000 AVDiT-S gave the right number of events in only ~1/3 of clips, and 83-89% of the
    # digits in those clips were right. Off for weights made before it (their config lacks the key).
    count_cond: bool = True
    # Every media token also gets its timeline slot: which prompt label is active there (see timeline.py).
    # Text-to-AV draws the timeline from event lengths measured on the training data; A2V / V2A read it
    # from the given modality. Counting and ordering events is then no longer the network's job: on
    # `shapes` (shapes-cpu, 1600 steps) glyph / tone accuracy went from 57 / 60% to 98 / 99.5% and onset
    # F1 from 0.865 to 1.0. Off for data without events (a folder of clips) and for older weights.
    timeline_cond: bool = True
    # The FFN's activation (`MLP_ACTIVATIONS`). The default is the tanh approximation every model
    # before this key was trained with, so a saved config without it means what it meant; the presets
    # below choose the exact "gelu".
    mlp_activation: str = KEYLESS_MLP_ACTIVATION

    def __post_init__(self):
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_activation must be one of {sorted(MLP_ACTIVATIONS)}, got {self.mlp_activation!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("the head dimension must be even (RoPE rotates pairs of channels)")
        if self.depth <= 0:
            raise ValueError(f"depth must be positive, got {self.depth}")

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **overrides) -> "ModelConfig":
        return _replace_checked(self, overrides)


# Named representations. The affine constants belong to the feature type (re-fit them with
# `python -m avgen.model.codec --fit-constants [--n-mels N]` for any other choice).
CODEC_PRESETS: dict[str, CodecConfig] = {
    "stft": CodecConfig(),
    "mel64": CodecConfig(n_mels=64, audio_offset=0.0583, audio_scale=0.1254),
}


# Named sizes (DiT-style table). T is the smoke-test size; S fits this CPU's training budget
# (~100 tokens per 3-s clip, see docs/MACHINE.md); B is for the device machine.
MODEL_PRESETS: dict[str, ModelConfig] = {
    "AVDiT-T": ModelConfig(hidden_size=64, depth=2, num_heads=2, mlp_activation="gelu"),
    "AVDiT-XS": ModelConfig(hidden_size=128, depth=4, num_heads=4, mlp_activation="gelu"),  # shapes in a 30-minute CPU run
    "AVDiT-S": ModelConfig(hidden_size=256, depth=6, num_heads=4, mlp_activation="gelu"),
    "AVDiT-B": ModelConfig(hidden_size=384, depth=8, num_heads=6, mlp_activation="gelu"),
}


def model_config(preset: str | ModelConfig, **overrides) -> ModelConfig:
    """A preset by name (or a config) with overrides; unknown names and keys raise ValueError."""
    if isinstance(preset, ModelConfig):
        cfg = preset
    elif preset in MODEL_PRESETS:
        cfg = MODEL_PRESETS[preset]
    else:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(MODEL_PRESETS)}")
    return cfg.replace(**overrides) if overrides else cfg


def spec_from_dict(d: dict) -> ClipSpec:
    known = {f.name for f in dataclasses.fields(ClipSpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown ClipSpec field(s) {unknown}")
    return ClipSpec(**d)
