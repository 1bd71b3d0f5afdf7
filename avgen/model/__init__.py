"""The joint audio-video model: network, objective, sampler and codec as separate pieces (EDM2-style),
plus configuration and the diffusers facade:

    config.py        typed configs and presets: ModelConfig (AVDiT-T/XS/S/B), CodecConfig, ObjectiveConfig,
                     PostfilterConfig, and the sampling defaults
    codec.py         AVCodec: clip <-> {video, audio} tokens, one token per frame each, one clock
    transformer.py   AVDiT: joint-attention diffusion transformer predicting clean tokens (layers.py: its parts)
    objective.py     rectified flow with a noise level per modality: sample_times, training_loss
    batch.py         real clips -> network inputs, per-sample generators (shared by training and evaluation)
    timeline.py      which prompt label is active at each token; the layout prior
    conditioning.py  what a sampling call is conditioned on: prompts, timeline, prompt states
    sampler.py       the flow-ODE integration with guidance
    samplers.py      Heun's method, safe at the end of the schedule
    pipeline.py      AVGenPipeline (diffusers) and load_pipeline
    postfilter.py    SpectralPostfilter: the fine spectral detail of generated audio, restored
    weights.py       weights on disk: checked before loading
    device.py        resolve_device, autocast (bf16 on CUDA, fp32 on CPU), maybe_compile

Names are re-exported lazily so that `import avgen.model.config` stays cheap (no diffusers import).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "config", "MODEL_PRESETS": "config", "CodecConfig": "config", "CODEC_PRESETS": "config",
    "AVCodec": "codec",
    "AVDiT": "transformer",
    "ObjectiveConfig": "config", "encode_prompts": "objective", "sample_times": "objective",
    "training_loss": "objective",
    "SpectralPostfilter": "postfilter",
    "Guidance": "sampler", "sample": "sampler",
    "AVGenPipeline": "pipeline", "AVGenPipelineOutput": "pipeline", "load_pipeline": "pipeline",
    "resolve_device": "device",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'avgen.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"avgen.model.{_EXPORTS[name]}"), name)
