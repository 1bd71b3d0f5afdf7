"""What `avgen bench` measures: the model size, the training preset and the sampling settings (the
library's defaults, so the bench times what the demo runs)."""
from __future__ import annotations

from dataclasses import dataclass

from avgen.api.settings import GenerateSettings

_DEFAULTS = GenerateSettings().check()


@dataclass(frozen=True)
class BenchConfig:
    model: str = "AVDiT-S"
    train_preset: str = "digits-cpu"
    steps: int = _DEFAULTS.steps  # the demo's default settings
    sampler: str = _DEFAULTS.sampler
    guidance_scale: float = _DEFAULTS.guidance_scale
    modality_scale: float = _DEFAULTS.modality_scale
    guidance_interval: tuple[float, float] | None = _DEFAULTS.guidance_interval  # None: the T2AV default
    big_batch: int = 8
    # up to 60 s: past the model's 3 s a clip is made in windows (avgen.model.chunks), linear in duration
    durations: tuple[float, ...] = (3.0, 6.0, 12.0, 24.0, 60.0)
    fast_steps: int = 2  # the distilled student's passes, timed beside the default sampler when the weights have one
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    gemm_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    train_steps: int = 6
    repeats: int = 3


BENCH_PRESETS = {
    "default": BenchConfig(),
    # CI's smoke test: the same code path on a tiny model, seconds.
    "tiny": BenchConfig(model="AVDiT-T", train_preset="tiny", steps=2, big_batch=2, durations=(1.5, 3.0, 6.0),
                        batch_sizes=(1, 2), gemm_sizes=(64, 128), train_steps=2, repeats=1),
}
