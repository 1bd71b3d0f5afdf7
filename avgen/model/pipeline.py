"""`AVGenPipeline`: a diffusers pipeline for joint audio-video generation, a thin facade that checks
its inputs once and runs the pieces beside it:

    conditioning.py  prompts parsed by the model's vocabulary, encoded once; the timeline
    sampler.py       the flow-ODE integration with guidance (a function of net, noise, schedule, guidance)
    codec.py         tokens <-> frames and waveform;  postfilter.py  the sound's fine detail restored

    pipe = AVGenPipeline.from_pretrained("weights/avgen")      # or load_pipeline("weights/avgen")
    out = pipe("3 1 4", num_inference_steps=25, generator=torch.Generator().manual_seed(0))
    out.frames  # (B, T, H, W, C) in [0, 1]     out.audio  # (B, S)     out.fps, out.sample_rate

Names follow diffusers' `LTX2Pipeline` (`guidance_scale`, `audio_guidance_scale`, `modality_scale`,
`latents`, `audio_latents`, `callback_on_step_end`, ...).

Audio-to-video / video-to-audio: `audio=` / `video=` hold that modality clean (t = 0) for every
pass and every step; it is returned bit-identical, and only the other modality is sampled.

Re-noising (SDEdit, Meng et al. 2022): `init_audio=` / `init_video=` with `strength` < 1 start that
modality from its own tokens noised to level `strength` and sample only the steps below it.

Decoding: generated audio goes through the weights' spectral-detail postfilter (`<weights>/postfilter`)
unless `postfilter=False`; `output_type="latent"` returns the tokens as the model drew them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from avgen.data.prompt import Prompt, Vocabulary
from avgen.model import conditioning
from avgen.model.codec import AVCodec
from avgen.model.config import DEFAULT_GUIDANCE_SCALE, default_interval
from avgen.model.device import maybe_compile, resolve_device
from avgen.model.postfilter import FOLDER as POSTFILTER_FOLDER, SpectralPostfilter
from avgen.model.sampler import Guidance, make_scheduler, predict_x0, sample, schedule
from avgen.model.transformer import AVDiT, MEDIA
from avgen.model.weights import DEFAULT_WEIGHTS, load_network


@dataclass
class AVGenPipelineOutput(BaseOutput):
    """frames (B, T, H, W, C) in [0, 1] and audio (B, S) (np or torch; tokens if output_type="latent");
    `timeline` (B, N) the slot ids the model was given per token (see `avgen.model.timeline`), None for
    weights that take no timeline."""

    frames: np.ndarray | torch.Tensor
    audio: np.ndarray | torch.Tensor
    fps: int
    sample_rate: int
    timeline: np.ndarray | None = None


class AVGenPipeline(DiffusionPipeline):
    """Text (and optionally one modality) -> synchronized video + audio, with an `AVDiT`."""

    # no `model_cpu_offload_seq`: the network is small, and the sampler calls the transformer's
    # `encode_prompt_states` as well as its forward, which accelerate's offload hooks would not see

    def __init__(self, transformer: AVDiT, scheduler, audio_scheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, audio_scheduler=audio_scheduler)
        self.codec = AVCodec.from_config(transformer.config)  # fixed, rebuilt from the stored config
        self.postfilter: SpectralPostfilter | None = None  # set by load_postfilter from <weights>/postfilter

    @classmethod
    def from_transformer(cls, transformer: AVDiT, sampler: str = "euler") -> "AVGenPipeline":
        return cls(transformer, make_scheduler(sampler), make_scheduler(sampler))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "AVGenPipeline":
        """diffusers' loader, plus the folder's postfilter (`<folder>/postfilter`) when it has one."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return pipe.load_postfilter(pretrained_model_name_or_path)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers' writer, plus the postfilter (`<folder>/postfilter`) when the pipeline has one."""
        super().save_pretrained(save_directory, **kwargs)
        if self.postfilter is not None:
            self.postfilter.save(Path(save_directory) / POSTFILTER_FOLDER)

    def load_postfilter(self, weights_dir) -> "AVGenPipeline":
        """Attach `<weights_dir>/postfilter` (fitted for these weights by `avgen postfilter`) if it exists;
        PostfilterError (one line) if it is unusable or fits other weights."""
        folder = Path(weights_dir) / POSTFILTER_FOLDER
        bins = self.codec.cfg.n_mels or self.codec.n_bins
        self.postfilter = SpectralPostfilter.load(folder, bins) if folder.is_dir() else None
        return self

    def postfilter_record(self, postfilter: bool, mode: str) -> dict | None:
        """What a sidecar or an eval report records of the postfilter that decoded generated audio: None
        when it is off, the weights have none, or the sound was given (A2V returns it as it is)."""
        used = self.postfilter if postfilter and mode != "a2v" else None
        return None if used is None else used.describe()

    def set_sampler(self, name: str) -> "AVGenPipeline":
        self.scheduler, self.audio_scheduler = make_scheduler(name), make_scheduler(name)
        return self

    @property
    def vocab(self) -> tuple[str, ...]:
        return tuple(self.transformer.config.vocab)

    @property
    def vocabulary(self) -> Vocabulary:
        """How this model reads a prompt (`avgen.data.prompt`)."""
        return conditioning.vocabulary_of(self.transformer)

    def parse_prompts(self, prompt, batch: int | None = None) -> list[Prompt]:
        """Prompt(s) (str, `Prompt` or None = the null prompt) -> one `Prompt` per sample; PromptError
        (a ValueError) names what cannot be read."""
        return conditioning.parse_prompts(self.vocabulary, prompt, batch)

    # ------------------------------------------------------------------ inputs
    def encode_given(self, video, audio, batch: int, num_tokens: int, device) -> dict[str, torch.Tensor]:
        """The modality the caller holds fixed (A2V / V2A), as clean tokens (B, N, D)."""
        given = {}
        if video is not None:
            frames = _batched(video, 4, batch, "video")
            given["video"] = self.codec.encode_video(frames.to(device))
        if audio is not None:
            given["audio"] = self.codec.encode_audio(_batched(audio, 1, batch, "audio").to(device))
        for m, tokens in given.items():
            if tokens.shape[1] != num_tokens:
                raise ValueError(f"the given {m} lasts {tokens.shape[1]} tokens; the clip needs {num_tokens}")
        return given

    def prepare_latents(self, latents, shape: tuple[int, ...], generator, device) -> torch.Tensor:
        """Initial noise, drawn on the CPU so one seed gives one clip on every device."""
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            return latents.to(device, torch.float32)
        return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32).to(device)

    def prepare_timeline(self, timeline, prompts: list[Prompt], num_tokens: int, generator, video, audio, device):
        """(B, N) slots for a timeline model, else None (see `conditioning.prepare_timeline`)."""
        batch = len(prompts)
        arrays = {m: None if v is None else _batched(v, nd, batch, m).cpu().numpy()
                  for m, v, nd in (("video", video, 4), ("audio", audio, 1))}
        return conditioning.prepare_timeline(self.transformer, self.codec.spec, self.codec.cfg.frames_per_token,
                                             timeline, prompts, num_tokens, generator, arrays["video"],
                                             arrays["audio"], device)

    def predict_x0(self, x: dict[str, torch.Tensor], t: dict[str, torch.Tensor], cond: conditioning.Conditioning,
                   guidance: Guidance, modulation=None) -> dict[str, torch.Tensor]:
        """One step's guided x0 from this pipeline's network (`sampler.predict_x0`); what `__call__`
        samples with (replace it on an instance to sample a known flow)."""
        return predict_x0(self.transformer, x, t, cond, guidance, modulation)

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, prompt: str | Prompt | list | None = None, negative_prompt: str | Prompt | list | None = None,
                 duration_s: float | None = None, num_inference_steps: int = 25,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE, audio_guidance_scale: float | None = None,
                 modality_scale: float = 1.0, audio_modality_scale: float | None = None,
                 guidance_interval: tuple[float, float] | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, audio_latents: torch.Tensor | None = None,
                 audio=None, video=None, init_audio=None, init_video=None, strength: float = 1.0,
                 output_type: str = "np", return_dict: bool = True,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents", "audio_latents"),
                 timeline="auto", postfilter: bool = True):
        """Generate clips. `prompt` is a label sequence ("3 1 4"), a parsed `Prompt`, or a list of them
        (a batch); `audio=` (S,) / (B, S) or `video=` (T, H, W, C) / (B, ...) in [0, 1] hold that modality
        clean. `init_audio=` / `init_video=` (same shapes) with `strength` in (0, 1): that modality starts
        from its own tokens noised to level `strength` (euler only; every sampled modality needs one).
        `guidance_interval`: noise levels where prompt guidance acts (None: (0.1, 0.8) from text, (0, 1)
        with a given modality). `timeline`: "auto", None (unknown) or slot ids. `postfilter`: decode
        generated audio through `self.postfilter` when the weights have one.
        Returns `AVGenPipelineOutput` (or a tuple (frames, audio) with return_dict=False).
        """
        self.check_inputs(output_type, num_inference_steps, audio, video)
        init_given = {"video": init_video is not None, "audio": init_audio is not None}
        self.check_strength(strength, init_given, {"video": video is not None, "audio": audio is not None})
        check_scales(guidance_scale=guidance_scale, audio_guidance_scale=audio_guidance_scale,
                     modality_scale=modality_scale, audio_modality_scale=audio_modality_scale)
        batch = len(prompt) if isinstance(prompt, list) else (len(generator) if isinstance(generator, list) else 1)
        prompts = self.parse_prompts(prompt, batch)
        negatives = self.parse_prompts(negative_prompt, batch)
        device = self._execution_device
        self.codec.to(device)
        num_tokens = self.codec.num_tokens(duration_s)
        given = self.encode_given(video, audio, batch, num_tokens, device)
        init = self.encode_given(init_video, init_audio, batch, num_tokens, device) if strength < 1 else {}
        # the timeline is read from a clean modality, else from the re-noised ones (their events stay put)
        read = (init_video, init_audio) if init and not given else (video, audio)
        interval = default_interval(bool(given)) if guidance_interval is None else guidance_interval
        guidance = Guidance(guidance_scale, guidance_scale if audio_guidance_scale is None else audio_guidance_scale,
                            modality_scale, modality_scale if audio_modality_scale is None else audio_modality_scale,
                            check_interval(interval))
        vocabulary = self.vocabulary
        cond = conditioning.Conditioning(
            conditioning.encode(prompts, vocabulary, device), conditioning.encode(negatives, vocabulary, device),
            self.prepare_timeline(timeline, prompts, num_tokens, generator, *read, device)).encode_states(self.transformer)
        dims = self.codec.dims
        x = {"video": self.prepare_latents(latents, (batch, num_tokens, dims["video"]), generator, device),
             "audio": self.prepare_latents(audio_latents, (batch, num_tokens, dims["audio"]), generator, device),
             **given}
        noisy = [m for m in MEDIA if m not in given]
        schedulers = {"video": self.scheduler, "audio": self.audio_scheduler}
        plan = schedule(schedulers, noisy, num_inference_steps, strength, x["video"].device)
        self._num_timesteps = len(plan)
        def step_end(i, step_t, x):  # diffusers' step-end callback, on the tensors it names
            return self._run_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, i, step_t, x)
        with self.progress_bar(total=len(plan)) as progress:
            x = sample(self.transformer, x, noisy, cond, guidance, schedulers, plan, init,
                       step_end if callback_on_step_end is not None else None, progress, self.predict_x0)
        self.maybe_free_model_hooks()
        frames, waves = self.decode(x, given, video, audio, output_type, postfilter)
        if not return_dict:
            return frames, waves
        slots = cond.slots
        return AVGenPipelineOutput(frames, waves, self.codec.spec.fps, self.codec.spec.sample_rate,
                                   None if slots is None else slots.cpu().numpy())

    @property
    def num_timesteps(self) -> int:
        """Scheduler steps in the current (or last) sampling run."""
        return self._num_timesteps

    @staticmethod
    def check_inputs(output_type: str, num_inference_steps: int, audio, video) -> None:
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be a whole number, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if audio is not None and video is not None:
            raise ValueError("give audio= or video=, not both: there would be nothing to generate")

    def check_strength(self, strength, init_given: dict[str, bool], given: dict[str, bool]) -> None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"strength must be a noise level in (0, 1], got {strength!r}")
        if strength == 1:
            return
        if not isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError("strength < 1 needs the euler sampler")
        both = [m for m in MEDIA if init_given[m] and given[m]]
        if both:
            raise ValueError(f"{both[0]} is given clean and as init_{both[0]}: give one")
        missing = [m for m in MEDIA if not init_given[m] and not given[m]]
        if missing:
            raise ValueError(f"strength < 1 starts every sampled modality from its own tokens: give init_{missing[0]}= "
                             f"(or {missing[0]}= to hold it clean)")

    def _run_callback(self, callback, names, i, step_t, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = {"latents": "video", "audio_latents": "audio"}
        unknown = [n for n in names if n not in key]
        if unknown:
            raise ValueError(f"callback tensor inputs {unknown} unknown; choose from {list(key)}")
        returned = callback(self, i, step_t, {n: x[key[n]] for n in names}) or {}
        return {**x, **{key[n]: v for n, v in returned.items() if n in key}}

    def decode(self, x: dict[str, torch.Tensor], given: dict, video, audio, output_type: str,
               postfilter: bool = True):
        """Tokens -> waveforms and frames; a given modality is passed through untouched, generated audio
        goes through the postfilter (when the weights have one and `postfilter`)."""
        if output_type == "latent":
            return x["video"], x["audio"]
        batch = x["video"].shape[0]
        frames = _batched(video, 4, batch, "video") if "video" in given else self.codec.decode_video(x["video"])
        if "audio" in given:
            waves = _batched(audio, 1, batch, "audio")
        else:
            tokens = x["audio"]
            if postfilter and self.postfilter is not None:
                tokens = self.codec.audio_tokens(self.postfilter(self.codec.audio_frames(tokens.float())))
            waves = self.codec.decode_audio(tokens)
        if output_type == "np":
            return frames.cpu().numpy(), waves.cpu().numpy()
        return frames, waves


def _batched(x, sample_ndim: int, batch: int, name: str) -> torch.Tensor:
    """An array for one sample (repeated over the batch) or for the whole batch -> float tensor."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    if x.ndim == sample_ndim:
        x = x[None].expand(batch, *x.shape)
    if x.ndim != sample_ndim + 1 or x.shape[0] != batch:
        raise ValueError(f"{name} must have {sample_ndim} dims (one sample) or {sample_ndim + 1} with batch "
                         f"{batch}, got shape {tuple(x.shape)}")
    return x


def check_scales(**scales) -> None:
    """Guidance scales are finite numbers (None = follow the video's); NaN would fill a clip with NaN."""
    for name, v in scales.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")


def check_interval(interval) -> tuple[float, float]:
    """(lo, hi) noise levels with 0 <= lo <= hi <= 1, as floats."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two noise levels (lo, hi), got {interval!r}") from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got ({lo:g}, {hi:g})")
    return lo, hi


def load_pipeline(weights_dir=DEFAULT_WEIGHTS, device: str = "auto", sampler: str = "euler",
                  compile: bool = False, postfilter: bool = True) -> AVGenPipeline:
    """A weights folder (as written by `AVGenPipeline.save_pretrained` / `avgen export`) -> ready pipeline,
    offline, its tensors checked once before loading (`load_network`); with its postfilter unless
    `postfilter=False` (fitting a new one must not depend on the old one)."""
    pipe = AVGenPipeline.from_transformer(load_network(weights_dir).eval(), sampler)
    if postfilter:
        pipe.load_postfilter(weights_dir)
    pipe = pipe.to(resolve_device(device))
    pipe.transformer = maybe_compile(pipe.transformer, compile)
    return pipe


__all__ = ["AVGenPipeline", "AVGenPipelineOutput", "check_interval", "check_scales", "load_pipeline"]
