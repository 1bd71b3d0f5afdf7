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
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    magnitudes; `python -m avgen.eval.codec_check --measure` prints them again) so tokens are about unit
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
    # Every token's AdaLN input also carries the number of labels in the prompt (0 = null prompt):
    # attention averages prompt tokens, so without it the network cannot count them. Off for weights
    # made before it (their config lacks the key).
    count_cond: bool = True
    # Every media token also gets its timeline slot: which prompt label is active there (timeline.py),
    # so counting and ordering events is not left to the network. Off for data without events and for
    # older weights. Both inputs' effect: docs/experiments.md.
    timeline_cond: bool = True
    # The FFN's activation (`MLP_ACTIVATIONS`). The default is the tanh approximation every model
    # before this key was trained with, so a saved config without it means what it meant; the presets
    # below choose the exact "gelu".
    mlp_activation: str = KEYLESS_MLP_ACTIVATION
    # A linear probe per media stream, on the residual stream after half the blocks, that names the label
    # of each token in A2V / V2A samples (`ObjectiveConfig.label_weight`): the clean stream must read what
    # its own content says (the spoken digit, the drawn one), and the noisy stream what the clean one
    # says, across. Used in training only; off for older weights.
    label_probe: bool = False

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
# `python -m avgen.eval.codec_check --fit-constants [--n-mels N]` for any other choice).
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


DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "avgen"  # the shipped weights folder

# ---------------------------------------------------------------------------- sampling defaults
# Here, beside the model's other settings, so that a command line or a page can show them without
# importing the sampler (torch, diffusers).
DEVICES = ("auto", "cpu", "cuda", "mps")  # avgen.model.device.resolve_device; also cuda:N
SAMPLER_NAMES = ("euler", "heun", "dpm++", "fast")  # avgen.model.sampler.SAMPLERS builds each
# "fast": the weights' distilled student (`avgen.model.student`), Euler over its own levels, guidance
# folded in; it makes a clip in at most this many passes (its default), and from a prompt only.
FAST_MAX_STEPS = 2
DEFAULT_STEPS = 25  # the other samplers' default
DEFAULT_GUIDANCE_SCALE = 6.0  # 4 / 6 / 8 measured: docs/experiments.md
# Prompt guidance acts only between these noise levels (1 = pure noise; Kynkaanniemi et al. 2024,
# "Applying Guidance in a Limited Interval"). Above 0.8 the x0 prediction is a blur of where events
# may be, and guiding on it adds or deletes events; below 0.1 the digits are decided and guiding only
# pushes the sound's fine detail off the data (figures: docs/experiments.md).
DEFAULT_GUIDANCE_INTERVAL = (0.1, 0.8)
# With audio or video given the layout is the given modality's, so guidance acts at every level
# (A2V / V2A digit accuracy 4 points higher than at (0, 0.8)).
GIVEN_GUIDANCE_INTERVAL = (0.0, 1.0)


def default_interval(given: bool) -> tuple[float, float]:
    """The noise levels where prompt guidance acts unless told: see the two constants above."""
    return GIVEN_GUIDANCE_INTERVAL if given else DEFAULT_GUIDANCE_INTERVAL


# ---------------------------------------------------------------------------- training objective
@dataclass(frozen=True)
class ObjectiveConfig:
    # Logit-normal t (SD3, Esser et al. 2024), shifted towards noise: at (0, 1) the model rarely sees
    # t > 0.9, where a clip's structure (how many events, where) is decided.
    t_mean: float = 1.0  # logit-normal location: median t = sigmoid(1.0) = 0.73
    t_std: float = 1.2  # logit-normal scale: P(t > 0.9) = 0.16
    p_clean: float = 0.15  # per modality, mutually exclusive: P(video clean) = P(audio clean) = p_clean
    p_drop_prompt: float = 0.1
    # Prompt dropout for a sample with one modality held clean (A2V / V2A): there the given modality
    # alone must carry the meaning across (UniForm, Harmony: conditional tasks without a prompt must be
    # a real share of training). < 0: the same as p_drop_prompt. Decided by the same draw, so runs
    # that leave it unset replay exactly.
    p_drop_prompt_given: float = -1.0
    # Weight of the label probe's cross-entropy on the tokens of a modality held clean (models with
    # `label_probe`; 0 = off). An auxiliary task on an intermediate layer, as REPA aligns one (Yu et al.
    # 2025, "Representation Alignment for Generation"), here with the clip's own ground-truth labels.
    label_weight: float = 0.0
    p_drop_cross: float = 0.1
    p_drop_timeline: float = 0.3  # models with a timeline input: how often it is withheld (so --no-timeline works)
    t_min: float = 0.05  # clamp of t in v_pred = (x_t - x0_pred) / t (bounds the weight at 1/t_min^2)
    # A share of each modality's times drawn uniform in (0, t_low) instead: the logit-normal above
    # puts only 6% of draws below t = 0.3, where a clip's fine detail (a voice's dynamics inside
    # an event) is written. 0 = off, and then no extra random draws are made (old runs replay).
    p_low: float = 0.0
    t_low: float = 0.3

    def __post_init__(self):
        if not 0 <= 2 * self.p_clean <= 1:
            raise ValueError(f"p_clean must lie in [0, 0.5], got {self.p_clean}")
        if not 0 <= self.label_weight < 100:
            raise ValueError(f"label_weight must lie in [0, 100), got {self.label_weight}")
        if self.p_drop_prompt_given > 1:
            raise ValueError(f"p_drop_prompt_given must lie in [0, 1] (or < 0: as p_drop_prompt), "
                             f"got {self.p_drop_prompt_given}")
        for name in ("p_drop_prompt", "p_drop_cross", "p_drop_timeline"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0 < self.t_min < 1:
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min}")
        if not 0 <= self.p_low <= 1:
            raise ValueError(f"p_low must lie in [0, 1], got {self.p_low}")
        if not 0 < self.t_low <= 1:
            raise ValueError(f"t_low must lie in (0, 1], got {self.t_low}")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- audio postfilter
class PostfilterError(ValueError):
    """A postfilter folder that cannot be used with these weights; the message names the file."""


@dataclass(frozen=True)
class PostfilterConfig:
    width: int = 3  # bins of the moving average that defines the envelope (3 x 31 Hz = 94 Hz; 5 scored worse)
    smooth: int = 9  # bins the fitted gains are averaged over (a 9-bin, 280-Hz window)
    active_range: float = 1.5  # loud frames: mean feature within this of the clip's loudest frame
    strength: float = 1.0  # applied gain = 1 + strength * (fitted gain - 1); 0 = off, 1 = the variance matched
    fit: dict = field(default_factory=dict)  # how the gains were fitted (clips, seeds, weights, ratios)

    def __post_init__(self):
        for name in ("width", "smooth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % 2 == 0:
                raise PostfilterError(f"postfilter {name} must be an odd whole number >= 1, got {v!r}")
        number = lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
        if not (number(self.active_range) and self.active_range > 0):
            raise PostfilterError(f"postfilter active_range must be a positive number, got {self.active_range!r}")
        if not (number(self.strength) and self.strength >= 0):
            raise PostfilterError(f"postfilter strength must be a number >= 0, got {self.strength!r}")
        if not isinstance(self.fit, dict):
            raise PostfilterError(f"postfilter fit must be an object (how the gains were fitted), got {self.fit!r}")


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
