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

Clips longer than the model's own (`duration_s`, from a prompt) are made as overlapping windows, each
continuing the last (`chunks.py`); `context_latents=` with `context_mask=` hold chosen tokens at given
values in both modalities while the rest is sampled (continuation, temporal inpainting).

The fast sampler (`set_sampler("fast")`): the weights' distilled student (`<weights>/student`,
`avgen.model.student`) makes the clip from a prompt in its one or two passes, prompt guidance folded in
(the guidance arguments are not used), and decodes the sound with the student's Griffin-Lim setting.

Decoding: generated audio goes through the weights' spectral-detail postfilter (`<weights>/postfilter`)
unless `postfilter=False`; `output_type="latent"` returns the tokens as the model drew them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from avgen.data.prompt import Prompt, Vocabulary
from avgen.model import chunks, conditioning
from avgen.model.checks import check_interval, check_scales
from avgen.model.codec import AVCodec
from avgen.model.config import DEFAULT_GUIDANCE_SCALE, default_interval
from avgen.model.device import maybe_compile, resolve_device
from avgen.model.postfilter import FOLDER as POSTFILTER_FOLDER, SpectralPostfilter
from avgen.model.sampler import Guidance, make_scheduler, predict_x0, sample, schedule
from avgen.model.student import StudentConfig, check_fast, load_student
from avgen.model.transformer import AVDiT, MEDIA
from avgen.model.weights import DEFAULT_WEIGHTS, load_network


@dataclass
class AVGenPipelineOutput(BaseOutput):
    """frames (B, T, H, W, C) in [0, 1] and audio (B, S) (np or torch; tokens if output_type="latent");
    `timeline` (B, N) the slot ids the model was given per token (see `avgen.model.timeline`), None for
    weights that take no timeline. `seams`: for a clip made in windows (`chunks.py`), the times where
    each window's new tokens began (None for a clip made at once)."""

    frames: np.ndarray | torch.Tensor
    audio: np.ndarray | torch.Tensor
    fps: int
    sample_rate: int
    timeline: np.ndarray | None = None
    seams: list[list[float]] | None = None  # per sample, where each window after the first began (s)


class AVGenPipeline(DiffusionPipeline):
    """Text (and optionally one modality) -> synchronized video + audio, with an `AVDiT`."""

    # no `model_cpu_offload_seq`: the network is small, and the sampler calls the transformer's
    # `encode_prompt_states` as well as its forward, which accelerate's offload hooks would not see

    def __init__(self, transformer: AVDiT, scheduler, audio_scheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, audio_scheduler=audio_scheduler)
        self.codec = AVCodec.from_config(transformer.config)  # fixed, rebuilt from the stored config
        self.postfilter: SpectralPostfilter | None = None  # set by load_postfilter from <weights>/postfilter
        self.student: AVDiT | None = None  # set by load_student from <weights>/student
        self.student_config: StudentConfig | None = None
        self.sampler_name = "euler"

    @classmethod
    def from_transformer(cls, transformer: AVDiT, sampler: str = "euler") -> "AVGenPipeline":
        return cls(transformer, make_scheduler(sampler), make_scheduler(sampler)).set_sampler(sampler)

    def load_student(self, weights_dir) -> "AVGenPipeline":
        """Attach `<weights_dir>/student` (the distilled student of these weights) if it exists;
        CheckpointError (one line) if it is unusable or was distilled from other weights."""
        found = load_student(weights_dir, self.transformer)
        self.student, self.student_config = found if found is not None else (None, None)
        if self.student is not None:
            self.student.to(self.transformer.device)
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "AVGenPipeline":
        """diffusers' loader, plus the folder's postfilter (`<folder>/postfilter`) and distilled student
        (`<folder>/student`) when it has them."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return pipe.load_postfilter(pretrained_model_name_or_path).load_student(pretrained_model_name_or_path)

    def to(self, *args, **kwargs) -> "AVGenPipeline":
        """diffusers' move, and the student with the transformer (it is not a registered module: saving a
        pipeline writes the teacher alone)."""
        pipe = super().to(*args, **kwargs)
        if pipe.student is not None:
            pipe.student.to(pipe.transformer.device)
        return pipe

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
        self.sampler_name = name
        return self

    @property
    def vocab(self) -> tuple[str, ...]:
        return tuple(self.transformer.config.vocab)

    @property
    def vocabulary(self) -> Vocabulary:
        """How this model reads a prompt (`avgen.data.prompt`)."""
        return conditioning.vocabulary_of(self.transformer)

    def vocabulary_for(self, duration_s: float | None) -> Vocabulary:
        """How a prompt for a clip of `duration_s` is read: a clip longer than the model's takes more labels
        (`chunks.long_capacity`; it is made in windows)."""
        tokens, window = self.codec.num_tokens(duration_s), self.codec.num_tokens()
        v = self.vocabulary
        return dataclasses.replace(v, max_events=chunks.long_capacity(v.max_events, tokens, window))

    def parse_prompts(self, prompt, batch: int | None = None, duration_s: float | None = None) -> list[Prompt]:
        """Prompt(s) (str, `Prompt` or None = the null prompt) -> one `Prompt` per sample; PromptError
        (a ValueError) names what cannot be read."""
        return conditioning.parse_prompts(self.vocabulary_for(duration_s), prompt, batch)

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
        samples with (replace it on an instance to sample a known flow). The fast sampler's network
        is the student."""
        return predict_x0(self.network, x, t, cond, guidance, modulation)

    @property
    def fast(self) -> bool:
        return self.sampler_name == "fast"

    @property
    def decode_iters(self) -> int | None:
        """Griffin-Lim iterations of the current sampler's sound (the student's setting; None: the codec's)."""
        return self.student_config.griffin_lim_iters if self.fast and self.student_config else None

    @property
    def network(self) -> AVDiT:
        """The network the current sampler runs: the student for the fast sampler, else the transformer."""
        return self.student if self.fast and self.student is not None else self.transformer

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, prompt: str | Prompt | list | None = None, negative_prompt: str | Prompt | list | None = None,
                 duration_s: float | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE, audio_guidance_scale: float | None = None,
                 modality_scale: float = 1.0, audio_modality_scale: float | None = None,
                 guidance_interval: tuple[float, float] | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, audio_latents: torch.Tensor | None = None,
                 audio=None, video=None, init_audio=None, init_video=None, strength: float = 1.0,
                 output_type: str = "np", return_dict: bool = True,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents", "audio_latents"),
                 timeline="auto", postfilter: bool = True, context_latents: dict[str, torch.Tensor] | None = None,
                 context_mask: torch.Tensor | None = None, on_window: Callable | None = None):
        """Generate clips. `prompt` is a label sequence ("3 1 4"), a parsed `Prompt`, or a list of them
        (a batch); `audio=` (S,) / (B, S) or `video=` (T, H, W, C) / (B, ...) in [0, 1] hold that modality
        clean. `init_audio=` / `init_video=` (same shapes) with `strength` in (0, 1): that modality starts
        from its own tokens noised to level `strength` (euler only; every sampled modality needs one).
        `guidance_interval`: noise levels where prompt guidance acts (None: (0.1, 0.8) from text, (0, 1)
        with a given modality). `timeline`: "auto", None (unknown) or slot ids. `postfilter`: decode
        generated audio through `self.postfilter` when the weights have one. `context_latents`
        ({video, audio}: (B, N, D) tokens) and `context_mask` (B, N) bool: tokens held at those values
        in both modalities (see `sampler.sample`). A `duration_s` longer than the model's clip, from a
        prompt, is made in overlapping windows (`chunks.py`); `on_window(b, window, tokens)` is called as
        each window of sample b is done ({video, audio}: (B, N, D), final up to `window.end`; a clip made
        at once is one window), so a caller can decode and play it while the next is made.
        Returns `AVGenPipelineOutput` (or a tuple (frames, audio) with return_dict=False).
        """
        if num_inference_steps is None:  # the sampler's own: 25, or the student's passes
            num_inference_steps = len(self.student_config.levels) if self.fast and self.student else 25
        self.check_inputs(output_type, num_inference_steps, audio, video)
        if self.fast:
            check_fast(self.student, self.student_config, num_inference_steps, audio is not None or video is not None,
                       strength)
        init_given = {"video": init_video is not None, "audio": init_audio is not None}
        self.check_strength(strength, init_given, {"video": video is not None, "audio": audio is not None})
        check_scales(guidance_scale=guidance_scale, audio_guidance_scale=audio_guidance_scale,
                     modality_scale=modality_scale, audio_modality_scale=audio_modality_scale)
        batch = len(prompt) if isinstance(prompt, list) else (len(generator) if isinstance(generator, list) else 1)
        prompts = self.parse_prompts(prompt, batch, duration_s)
        negatives = self.parse_prompts(negative_prompt, batch)
        device = self._execution_device
        self.codec.to(device)
        num_tokens = self.codec.num_tokens(duration_s)
        if (num_tokens > self.codec.num_tokens() and video is None and audio is None and strength == 1
                and context_latents is None):
            return self._call_long(prompts, negatives, num_tokens, generator, latents, audio_latents, timeline,
                                   output_type, return_dict, postfilter, on_window, dict(
                                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                       audio_guidance_scale=audio_guidance_scale, modality_scale=modality_scale,
                                       audio_modality_scale=audio_modality_scale,
                                       guidance_interval=guidance_interval, callback_on_step_end=callback_on_step_end,
                                       callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs))
        given = self.encode_given(video, audio, batch, num_tokens, device)
        init = self.encode_given(init_video, init_audio, batch, num_tokens, device) if strength < 1 else {}
        # the timeline is read from a clean modality, else from the re-noised ones (their events stay put)
        read = (init_video, init_audio) if init and not given else (video, audio)
        interval = default_interval(bool(given)) if guidance_interval is None else guidance_interval
        guidance = Guidance(guidance_scale, guidance_scale if audio_guidance_scale is None else audio_guidance_scale,
                            modality_scale, modality_scale if audio_modality_scale is None else audio_modality_scale,
                            check_interval(interval))
        if self.fast:  # the student was distilled from the guided teacher: one conditional pass per step
            guidance = Guidance(1.0, 1.0, 1.0, 1.0)
        vocabulary = self.vocabulary
        cond = conditioning.Conditioning(
            conditioning.encode(prompts, vocabulary, device), conditioning.encode(negatives, vocabulary, device),
            self.prepare_timeline(timeline, prompts, num_tokens, generator, *read, device)).encode_states(self.network)
        dims = self.codec.dims
        x = {"video": self.prepare_latents(latents, (batch, num_tokens, dims["video"]), generator, device),
             "audio": self.prepare_latents(audio_latents, (batch, num_tokens, dims["audio"]), generator, device),
             **given}
        noisy = [m for m in MEDIA if m not in given]
        schedulers = {"video": self.scheduler, "audio": self.audio_scheduler}
        levels = list(self.student_config.levels[:num_inference_steps]) if self.fast else None
        plan = schedule(schedulers, noisy, num_inference_steps, strength, x["video"].device, levels)
        self._num_timesteps = len(plan)
        def step_end(i, step_t, x):  # diffusers' step-end callback, on the tensors it names
            return self._run_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, i, step_t, x)
        with self.progress_bar(total=len(plan)) as progress:
            x = sample(self.network, x, noisy, cond, guidance, schedulers, plan, init,
                       step_end if callback_on_step_end is not None else None, progress, self.predict_x0,
                       *chunks.check_context(context_latents, context_mask, x, noisy))
        self.maybe_free_model_hooks()
        if on_window is not None:
            for b in range(batch):
                on_window(b, chunks.Window(0, num_tokens, 0), x)
        frames, waves = self.decode(x, given, video, audio, output_type, postfilter, self.decode_iters)
        if not return_dict:
            return frames, waves
        slots = cond.slots
        return AVGenPipelineOutput(frames, waves, self.codec.spec.fps, self.codec.spec.sample_rate,
                                   None if slots is None else slots.cpu().numpy())

    def _call_long(self, prompts: list[Prompt], negatives: list[Prompt], num_tokens: int, generator, latents,
                   audio_latents, timeline, output_type: str, return_dict: bool, postfilter: bool,
                   on_window: Callable | None, kwargs: dict):
        """A clip longer than the model's, from a prompt: sampled window by window (`chunks.sample_long`),
        the tokens decoded at once."""
        x, slots, seams = chunks.sample_long(self, prompts, negatives, num_tokens, generator, latents, audio_latents,
                                             timeline, on_window, kwargs)
        frames, waves = self.decode(x, {}, None, None, output_type, postfilter, self.decode_iters)
        if not return_dict:
            return frames, waves
        return AVGenPipelineOutput(frames, waves, self.codec.spec.fps, self.codec.spec.sample_rate,
                                   None if slots is None else slots.cpu().numpy(), seams)

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
               postfilter: bool = True, griffin_lim_iters: int | None = None):
        """Tokens -> waveforms and frames; a given modality is passed through untouched, generated audio
        goes through the postfilter (when the weights have one and `postfilter`) and Griffin-Lim
        (`griffin_lim_iters` iterations; None: the codec's)."""
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
            waves = self.codec.decode_audio(tokens, griffin_lim_iters)
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


def load_pipeline(weights_dir=DEFAULT_WEIGHTS, device: str = "auto", sampler: str = "euler",
                  compile: bool = False, postfilter: bool = True, student: bool = True) -> AVGenPipeline:
    """A weights folder (as written by `AVGenPipeline.save_pretrained` / `avgen export`) -> ready pipeline,
    offline, its tensors checked once before loading (`load_network`); with its postfilter unless
    `postfilter=False` (fitting a new one must not depend on the old one), and its distilled student
    when it has one (the fast sampler) unless `student=False` (distilling a new one)."""
    pipe = AVGenPipeline.from_transformer(load_network(weights_dir).eval(), sampler)
    if postfilter:
        pipe.load_postfilter(weights_dir)
    if student:
        pipe.load_student(weights_dir)
    where = resolve_device(device)
    pipe = pipe.to(where)
    pipe.transformer = maybe_compile(pipe.transformer, compile)
    if pipe.student is not None:
        pipe.student = maybe_compile(pipe.student.to(where), compile)
    return pipe


__all__ = ["AVGenPipeline", "AVGenPipelineOutput", "check_interval", "check_scales", "load_pipeline"]
