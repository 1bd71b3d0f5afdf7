"""The joint audio-video model, in four separate pieces (EDM2-style) plus configuration:

    config.py       ModelConfig / MODEL_PRESETS (AVDiT-T/S/B), CodecConfig / CODEC_PRESETS
    codec.py        AVCodec: clip <-> {video, audio} tokens, one token per frame each, one clock
    transformer.py  AVDiT: joint-attention diffusion transformer predicting clean tokens
    objective.py    rectified flow: sample_times, encode_prompts, training_loss
    postfilter.py   SpectralPostfilter: the fine spectral detail of generated audio, restored (fitted per weights)
    pipeline.py     AVGenPipeline (diffusers) + generate / load_pipeline for the CLI and demo
    device.py       resolve_device, autocast (bf16 on CUDA, fp32 on CPU), maybe_compile

Names are re-exported lazily so that `import avgen.model.config` stays cheap (no diffusers import).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "config", "MODEL_PRESETS": "config", "CodecConfig": "config", "CODEC_PRESETS": "config",
    "AVCodec": "codec",
    "AVDiT": "transformer",
    "ObjectiveConfig": "objective", "encode_prompts": "objective", "sample_times": "objective",
    "training_loss": "objective",
    "SpectralPostfilter": "postfilter",
    "AVGenPipeline": "pipeline", "AVGenPipelineOutput": "pipeline", "GenerateSettings": "pipeline",
    "generate": "pipeline", "load_pipeline": "pipeline",
    "resolve_device": "device",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'avgen.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"avgen.model.{_EXPORTS[name]}"), name)
