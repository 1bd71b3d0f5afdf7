"""Sampling: `AVGenPipeline`, a diffusers pipeline for joint audio-video generation, and the
library functions the CLI (`avgen generate`) and the demo both call.

    pipe = AVGenPipeline.from_pretrained("weights/avgen")
    out = pipe("3 1 4", num_inference_steps=25, generator=torch.Generator().manual_seed(0))
    out.frames  # (B, T, H, W, C) in [0, 1]     out.audio  # (B, S)     out.fps, out.sample_rate

Names follow diffusers' `LTX2Pipeline`. Guidance, per modality m (x0 space, which is the same as
velocity space since v = (x_t - x0) / t is affine in x0 with coefficients summing to one):
    x0_m = x0_cond + (g_m - 1) (x0_cond - x0_uncond) + (s_m - 1) (x0_cond - x0_nocross)
g_video = guidance_scale, g_audio = audio_guidance_scale, s = modality_scale (LTX-2's convention:
1.0 = off). x0_nocross is the conditional pass with the cross-modal path closed, so s > 1 pushes
each modality towards what it takes from the other. All passes run as ONE batched forward.
modality_scale defaults to 1.0 (off): on shapes, 2 and 3 did not help measurably (onset F1 0.908 / 0.880
against 0.890). Prompt guidance acts only at noise levels inside `guidance_interval` (default (0.1, 0.8); (0, 1) when
audio or video is given).

Work that does not change across steps runs once per call: the prompt stream's keys and values
(`with_prompt_states`) and every step's AdaLN outputs (`modulation_table`: they depend only on the
step's noise levels and each row's label count).

Audio-to-video / video-to-audio: `audio=` / `video=` hold that modality clean (t = 0) for every
pass and every step; it is returned bit-identical, and only the other modality is sampled.

Decoding: the audio the model drew goes through the weights' spectral-detail postfilter
(`avgen.model.postfilter`, stored in `<weights>/postfilter/`, read by `load_pipeline`) unless
`postfilter=False`; `output_type="latent"` returns the tokens as the model drew them.

Re-noising (SDEdit, Meng et al. 2022): `init_audio=` / `init_video=` with `strength` < 1 start that
modality from its own tokens noised to level `strength` and sample only the steps below it. On real
clips it measures where along the noise scale a model loses a modality's statistics
(`avgen eval --dataset talking-digits --renoise T`).
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
from dataclasses import dataclass, asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from avgen.data.clip import Clip
from avgen.model.codec import AVCodec
from avgen.model.device import autocast, maybe_compile, resolve_device
from avgen.model.objective import encode_prompts, x0_to_velocity
from avgen.model.postfilter import FOLDER as POSTFILTER_FOLDER, SpectralPostfilter
from avgen.model.samplers import FlowMatchHeunScheduler
from avgen.model.timeline import LayoutPrior, events_from_slots, slots_from_events, unknown_slot
from avgen.model.transformer import AVDiT, MEDIA, Modulation

# Solvers that integrate the flow-matching ODE; each modality gets its own instance because
# flow-matching schedulers keep a step counter (and multistep ones a history).
SAMPLERS: dict[str, Callable[[], object]] = {
    "euler": lambda: FlowMatchEulerDiscreteScheduler(),
    "heun": lambda: FlowMatchHeunScheduler(),  # 2nd order: 2N - 2 passes for N steps (see samplers.py)
    "dpm++": lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                 algorithm_type="dpmsolver++", solver_order=2),
}
TABLE_ROWS = 256  # rows of AdaLN outputs built at once (steps x [cond | uncond] x batch): ~20 MB for AVDiT-S
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "avgen"
# Prompt guidance acts between noise levels 0.1 and 0.8. Why 0.8, measured on earlier weights (100 clips, the same
# prompts and seeds, `avgen eval --generate 100 --frechet --guidance-interval 0 HI`): HI = 1 -> 20 empty clips,
# video / audio digit accuracy 49 / 49%, FD video / audio 2.28 / 39.0; HI = 0.8 -> 4 empty, 53 / 56%, FD 1.31 /
# 9.28 (floors 0.55 / 0.44). See `Guidance` for why. Why 0.1, on the step-20000 weights (the same 100 prompts and
# seeds): LO = 0 -> video / audio digits 94.1 / 98.5%, FD / KID audio 1.196 / 1.188; LO = 0.1 ->
# 94.1 / 97.5%, 1.075 / 0.987; LO = 0.2 -> 94.1 / 97.0%, 1.083 / 1.010 (floors 0.436 / 0.027): below 0.1 the
# digits are decided, and guiding there only pushes the sound's fine detail off the data.
DEFAULT_GUIDANCE_INTERVAL = (0.1, 0.8)
# With audio or video given (A2V / V2A) the layout is the given modality's, so there is nothing to
# protect and guidance acts at every noise level. Measured on the shipped weights (50 real test clips,
# with the prompt): A2V video accuracy 84.8% at (0, 1) against 80.8% at (0, 0.8); V2A audio 88.9 vs 84.8%.
GIVEN_GUIDANCE_INTERVAL = (0.0, 1.0)


def default_interval(given: bool) -> tuple[float, float]:
    """The noise levels where prompt guidance acts unless told: see the two constants above."""
    return GIVEN_GUIDANCE_INTERVAL if given else DEFAULT_GUIDANCE_INTERVAL


def make_scheduler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]()



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


@dataclass(frozen=True)
class Guidance:
    """Per-modality guidance scales (1.0 = that guidance is off), and the noise levels where prompt
    guidance acts: `interval` = (lo, hi) in t (1 = pure noise); outside it a modality is sampled
    from the conditional pass alone (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited
    Interval"). Why it matters here: at high noise the x0 prediction is a blurred mean of where
    events may be, so cond - uncond mostly encodes "fewer / more events than an average clip", and
    guiding on it there deletes the event of a 1-digit prompt and adds one to a 3-digit prompt."""

    video: float
    audio: float
    modality_video: float
    modality_audio: float
    interval: tuple[float, float] = (0.0, 1.0)

    def at(self, t: dict[str, float]) -> "Guidance":
        """The scales in force at noise levels {modality: t}: prompt guidance off outside `interval`."""
        lo, hi = self.interval
        off = {m: not (0.0 < t[m] and lo <= t[m] <= hi) for m in MEDIA}  # t = 0: held clean, not sampled
        return replace(self, video=1.0 if off["video"] else self.video, audio=1.0 if off["audio"] else self.audio)

    @property
    def needs_uncond(self) -> bool:
        return self.video != 1.0 or self.audio != 1.0

    @property
    def needs_nocross(self) -> bool:
        return self.modality_video != 1.0 or self.modality_audio != 1.0

    def combine(self, x0: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """{pass: {modality: x0}} -> guided {modality: x0}."""
        out = {}
        for m in MEDIA:
            cond = x0["cond"][m]
            g = cond
            if self.needs_uncond:
                g = g + (getattr(self, m) - 1) * (cond - x0["uncond"][m])
            if self.needs_nocross:
                g = g + (getattr(self, f"modality_{m}") - 1) * (cond - x0["nocross"][m])
            out[m] = g
        return out


class AVGenPipeline(DiffusionPipeline):
    """Text (and optionally one modality) -> synchronized video + audio, with an `AVDiT`."""

    # no `model_cpu_offload_seq`: the network is small, and the sampler calls the transformer's
    # `encode_prompt_states` as well as its forward, which accelerate's offload hooks would not see

    def __init__(self, transformer: AVDiT, scheduler, audio_scheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, audio_scheduler=audio_scheduler)
        self.codec = AVCodec.from_config(transformer.config)  # fixed, rebuilt from the stored config
        self.postfilter: SpectralPostfilter | None = None  # set by load_pipeline from <weights>/postfilter

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
        self.postfilter = self.postfilter_of(weights_dir, self.codec.cfg.n_mels or self.codec.n_bins)
        return self

    @staticmethod
    def postfilter_of(weights_dir, bins: int | None = None) -> SpectralPostfilter | None:
        """The postfilter a weights folder carries (None without one); with `bins`, checked to fit them."""
        folder = Path(weights_dir) / POSTFILTER_FOLDER
        return SpectralPostfilter.load(folder, bins) if folder.is_dir() else None

    @staticmethod
    def postfilter_record(weights_dir, postfilter: bool, mode: str) -> dict | None:
        """What a sidecar or an eval report records of the postfilter that decoded generated audio: None
        when it is off, the weights have none, or the sound was given (A2V returns it as it is)."""
        post = AVGenPipeline.postfilter_of(weights_dir) if postfilter and mode != "a2v" else None
        return None if post is None else post.describe()

    def set_sampler(self, name: str) -> "AVGenPipeline":
        self.scheduler, self.audio_scheduler = make_scheduler(name), make_scheduler(name)
        return self

    @property
    def vocab(self) -> tuple[str, ...]:
        return tuple(self.transformer.config.vocab)

    # ------------------------------------------------------------------ inputs
    def parse_prompts(self, prompt: str | list[str] | None, batch: int | None = None) -> list[list[str]]:
        """Prompt(s) -> label lists; None or "" is the null prompt. ValueError names bad labels."""
        prompts = prompt if isinstance(prompt, list) else [prompt] * (batch or 1)
        if batch is not None and len(prompts) != batch:
            raise ValueError(f"{len(prompts)} prompts for a batch of {batch}")
        bad = [p for p in prompts if p is not None and not isinstance(p, str)]
        if bad:
            raise ValueError(f"a prompt is text (a label sequence such as '3 1 4'), got {type(bad[0]).__name__}")
        labels = [(p or "").split() for p in prompts]
        encode_prompts(labels, self.vocab, self.transformer.config.max_events)  # validates
        return labels

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

    def prepare_timeline(self, timeline, prompt, batch: int, num_tokens: int, generator, video, audio, device):
        """(B, N) slots for a timeline model, else None. "auto": for text-to-AV drawn from the stored layout
        prior (seeded by each sample's generator, before its noise; unknown for weights that store none);
        with a given modality, read from its detected events (`timeline_from_given`; with the null prompt the
        slots carry no labels). Text-to-AV with the null prompt: unknown. None: unknown everywhere. Or the
        caller's (B, N) / (N,) slot ids. Without a generator the draw uses torch's global RNG."""
        cfg = self.transformer.config
        if not cfg.get("timeline_cond", False):
            if timeline is not None and not isinstance(timeline, str):
                raise ValueError("these weights take no timeline (trained without timeline_cond)")
            return None
        unknown = unknown_slot(cfg.max_events)
        if isinstance(timeline, str) and timeline != "auto":
            raise ValueError(f"timeline must be 'auto', None or slot ids, got {timeline!r}")
        if timeline is None:
            return torch.full((batch, num_tokens), unknown, dtype=torch.long, device=device)
        if not isinstance(timeline, str):
            slots = torch.as_tensor(timeline if isinstance(timeline, torch.Tensor) else np.asarray(timeline),
                                    dtype=torch.long).cpu()
            slots = slots[None].expand(batch, -1) if slots.ndim == 1 else slots
            if tuple(slots.shape) != (batch, num_tokens) or slots.min() < 0 or slots.max() > unknown:
                raise ValueError(f"timeline must be ({batch}, {num_tokens}) slot ids in 0..{unknown}")
            return slots.to(device)
        labels = self.parse_prompts(prompt, batch)
        if video is not None or audio is not None:
            rows = self.timeline_from_given(video, audio, labels, num_tokens)
        elif cfg.get("layout_prior") is None:  # a model built without data (tests, by hand): nothing to draw from
            return torch.full((batch, num_tokens), unknown, dtype=torch.long, device=device)
        else:
            prior = LayoutPrior.from_dict(cfg.layout_prior)
            gens = generator if isinstance(generator, list) else [generator] * batch
            rows = []
            for labs, gen in zip(labels, gens):
                seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen,  # first from each generator
                                         device=gen.device if gen is not None else "cpu"))
                rows.append(prior.draw(labs, num_tokens, np.random.default_rng(seed)) if labs
                            else np.full(num_tokens, unknown, dtype=np.int64))
        return torch.as_tensor(np.stack(rows), dtype=torch.long, device=device)

    def timeline_from_given(self, video, audio, labels: list[list[str]], num_tokens: int) -> list[np.ndarray]:
        """A2V / V2A: the given modality's events, found by the evaluation suite's onset detector, as slots
        for the prompt's labels in order. Unknown where they cannot be matched: a count other than the
        prompt's, or more events than the model takes."""
        from avgen.eval.onsets import AVSignal, detect_events, grey, tracks

        spec, cfg = self.codec.spec, self.transformer.config
        m = "video" if video is not None else "audio"
        given = _batched(video if video is not None else audio, 4 if video is not None else 1, len(labels), m)
        given = given.cpu().numpy()
        rows = []
        for labs, x in zip(labels, given):
            frames = grey(x) if m == "video" else np.zeros((num_tokens * self.codec.cfg.frames_per_token, 1, 1), np.float32)
            sound = x if m == "audio" else np.zeros(round(len(frames) / spec.fps * spec.sample_rate), np.float32)
            sig = AVSignal(frames, np.arange(len(frames)) / spec.fps, float(spec.fps), sound, spec.sample_rate)
            events = detect_events(tracks(sig)[m])
            if (labs and len(events) != len(labs)) or len(events) > cfg.max_events:
                rows.append(np.full(num_tokens, unknown_slot(cfg.max_events), dtype=np.int64))
            else:
                rows.append(slots_from_events([(None, e.onset_s, e.end_s) for e in events], num_tokens,
                                              cfg.token_seconds))
        return rows

    # ------------------------------------------------------------------ one guided step
    def with_prompt_states(self, prompts: dict) -> dict:
        """`prompts` ({"cond": (ids, mask), "uncond": (ids, mask), ...} on the execution device) plus
        "states": the prompt stream's keys and values for its [cond | uncond] rows. The prompt stream
        does not change across denoising steps, so this runs once per call; `predict_x0` picks each
        pass's rows."""
        ids, mask = (torch.cat([prompts["cond"][i], prompts["uncond"][i]]) for i in (0, 1))
        with autocast(ids.device):
            return {**prompts, "states": self.transformer.encode_prompt_states(ids, mask)}

    def modulation_table(self, t_steps: list[dict[str, float]], prompts: dict) -> Modulation:
        """The media streams' AdaLN outputs for the [cond | uncond] rows of the steps in `t_steps`
        (its step i: rows i * 2B ... (i + 1) * 2B), computed at once: they depend only on each row's
        noise levels and label count, both known before the loop. One matmul per layer replaces one
        per layer per step. `denoise` builds it for up to TABLE_ROWS rows at a time."""
        mask = torch.cat([prompts["cond"][1], prompts["uncond"][1]])  # (2B, P)
        per_step = mask.shape[0]
        device = mask.device
        t = {m: torch.tensor([ts[m] for ts in t_steps], device=device).repeat_interleave(per_step) for m in MEDIA}
        with autocast(device):
            return self.transformer.modulation(t["video"], t["audio"], mask.repeat(len(t_steps), 1))

    def predict_x0(self, x: dict[str, torch.Tensor], t: dict[str, torch.Tensor], prompts: dict[str, tuple],
                   guidance: Guidance, modulation: Modulation | None = None) -> dict[str, torch.Tensor]:
        """Guided x0 for both modalities from one batched forward over the needed passes (the
        unconditional pass is skipped at steps where no modality is guided). `modulation`: this
        step's [cond | uncond] rows of `modulation_table` (None: the forward computes its own)."""
        guidance = guidance.at({m: float(t[m][0]) for m in MEDIA})
        passes = ("cond",) + ("uncond",) * guidance.needs_uncond + ("nocross",) * guidance.needs_nocross
        batch = x["video"].shape[0]
        ids = torch.cat([prompts["uncond" if p == "uncond" else "cond"][0] for p in passes])  # (KB, P)
        mask = torch.cat([prompts["uncond" if p == "uncond" else "cond"][1] for p in passes])  # (KB, P)
        cross = torch.tensor([p != "nocross" for p in passes], device=ids.device).repeat_interleave(batch)  # (KB,)
        k = len(passes)
        with autocast(ids.device):
            rows = torch.cat([torch.arange(batch, device=ids.device) + batch * (p == "uncond") for p in passes])
            states = prompts["states"].select(rows)  # each pass's rows of [cond | uncond]
            slots = prompts.get("slots")  # every pass shares the timeline: guidance acts on labels, not layout
            extra = {} if slots is None else {"slots": slots.repeat(k, 1)}
            if modulation is not None:
                extra["modulation"] = modulation.select(rows)
            out = self.transformer(x["video"].repeat(k, 1, 1), x["audio"].repeat(k, 1, 1),
                                   t["video"].repeat(k), t["audio"].repeat(k), ids, mask, cross_modal=cross,
                                   prompt_states=states, **extra)
        per_pass = {p: {m: out[m].float()[i * batch:(i + 1) * batch] for m in MEDIA} for i, p in enumerate(passes)}
        return guidance.combine(per_pass)

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 duration_s: float | None = None, num_inference_steps: int = 25, guidance_scale: float = 6.0,
                 audio_guidance_scale: float | None = None, modality_scale: float = 1.0,
                 audio_modality_scale: float | None = None,
                 guidance_interval: tuple[float, float] | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, audio_latents: torch.Tensor | None = None,
                 audio=None, video=None, init_audio=None, init_video=None, strength: float = 1.0,
                 output_type: str = "np", return_dict: bool = True,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents", "audio_latents"),
                 timeline="auto", postfilter: bool = True):
        """Generate clips. `prompt` is a label sequence ("3 1 4") or a list of them (a batch);
        `audio=` (S,) / (B, S) or `video=` (T, H, W, C) / (B, ...) in [0, 1] hold that modality clean.
        `init_audio=` / `init_video=` (same shapes) with `strength` in (0, 1): that modality starts from its
        own tokens noised to level `strength` (euler only; every sampled modality needs one).
        `postfilter`: decode generated audio through `self.postfilter` when the weights have one.
        Returns `AVGenPipelineOutput` (or a tuple (frames, audio) with return_dict=False).
        """
        self.check_inputs(output_type, num_inference_steps, audio, video)
        init_given = {"video": init_video is not None, "audio": init_audio is not None}
        self.check_strength(strength, init_given, {"video": video is not None, "audio": audio is not None})
        check_scales(guidance_scale=guidance_scale, audio_guidance_scale=audio_guidance_scale,
                     modality_scale=modality_scale, audio_modality_scale=audio_modality_scale)
        batch = len(prompt) if isinstance(prompt, list) else (len(generator) if isinstance(generator, list) else 1)
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
        prompts = {"cond": self.encode_prompt(prompt, batch, device),
                   "uncond": self.encode_prompt(negative_prompt, batch, device),
                   "slots": self.prepare_timeline(timeline, prompt, batch, num_tokens, generator, *read, device)}
        prompts = self.with_prompt_states(prompts)
        dims = self.codec.dims
        x = {"video": self.prepare_latents(latents, (batch, num_tokens, dims["video"]), generator, device),
             "audio": self.prepare_latents(audio_latents, (batch, num_tokens, dims["audio"]), generator, device),
             **given}
        x = self.denoise(x, [m for m in MEDIA if m not in given], prompts, guidance, num_inference_steps,
                         callback_on_step_end, callback_on_step_end_tensor_inputs, init, strength)
        self.maybe_free_model_hooks()
        frames, waves = self.decode(x, given, video, audio, output_type, postfilter)
        if not return_dict:
            return frames, waves
        slots = prompts["slots"]
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

    def encode_prompt(self, prompt, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_ids, prompt_mask) for a prompt or list of prompts (None / "" = null prompt)."""
        return encode_prompts(self.parse_prompts(prompt, batch), self.vocab, self.transformer.config.max_events, device)

    def denoise(self, x: dict[str, torch.Tensor], noisy: list[str], prompts: dict, guidance: Guidance, steps: int,
                callback, callback_inputs, init: dict[str, torch.Tensor] | None = None,
                strength: float = 1.0) -> dict[str, torch.Tensor]:
        """Integrate the flow ODE for the `noisy` modalities; the others stay clean at t = 0. With
        `strength` < 1, only the steps at noise levels <= strength run, from `init`'s tokens noised there."""
        schedulers = {"video": self.scheduler, "audio": self.audio_scheduler}
        # the tokens' device, not `_execution_device`: that walks every module on each read (~4 ms
        # here), which read three times per step was a fifth of the CPU loop's time
        device = x["video"].device
        for m in noisy:
            schedulers[m].set_timesteps(steps, device=device)
        sigmas = schedulers[noisy[0]].sigmas
        start = 0 if strength >= 1 else int((sigmas > strength).sum())  # sigmas fall from 1 to 0
        for m in noisy:
            schedulers[m].set_begin_index(start)
            if start:  # x[m] holds the noise: mix in the modality's own tokens at the first kept level
                s = float(schedulers[m].sigmas[start])
                x[m] = (1 - s) * init[m] + s * x[m]
        timesteps = schedulers[noisy[0]].timesteps[start:]
        batch = x["video"].shape[0]
        self._num_timesteps = len(timesteps)
        # each scheduler's own sigma for each step (Heun repeats them, DPM rounds timesteps)
        t_steps = [{m: float(schedulers[m].sigmas[start + i]) if m in noisy else 0.0 for m in MEDIA}
                   for i in range(len(timesteps))]
        chunk = max(1, TABLE_ROWS // (2 * batch))  # steps per AdaLN table: its memory is bounded by rows
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, step_t in enumerate(timesteps):
                if i % chunk == 0:
                    table = self.modulation_table(t_steps[i:i + chunk], prompts)
                t = {m: torch.full((batch,), t_steps[i][m], device=device) for m in MEDIA}
                x0 = self.predict_x0(x, t, prompts, guidance, table.narrow(2 * batch * (i % chunk), 2 * batch))
                for m in noisy:
                    v = x0_to_velocity(x[m], x0[m], t[m])
                    x[m] = schedulers[m].step(v, step_t, x[m], return_dict=False)[0]
                if callback is not None:
                    x = self._run_callback(callback, callback_inputs, i, step_t, x)
                progress.update()
        return x

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


# ============================================================================ library API
@dataclass
class GenerateSettings:
    """Everything that decides a generated clip besides the weights (recorded in the sidecar)."""

    prompt: str = ""
    seed: int = 0
    steps: int = 25
    sampler: str = "euler"
    guidance_scale: float = 6.0  # 100 paired clips, shipped weights: 4 / 6 / 8 gave video digits 89.7 / 92.1 / 93.1%, audio 95.6 / 97.5 / 97.0%
    audio_guidance_scale: float | None = None
    modality_scale: float = 1.0
    guidance_interval: tuple[float, float] | None = None  # where prompt guidance acts; None: the mode's default
    duration: float | None = None
    num_clips: int = 1
    device: str = "auto"
    mode: str = "t2av"  # t2av | a2v | v2a
    timeline: bool = True  # weights with a timeline input: draw it (text) or read it (given modality); False: unknown
    postfilter: bool = True  # weights with a postfilter (<weights>/postfilter): decode generated audio through it

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> "GenerateSettings":
        """ValueError with one line for settings no clip can be made from (the library's own check;
        the CLI and the studio add their own ranges on top)."""
        for name in ("seed", "steps", "num_clips"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be a whole number, got {v!r}")
        if self.steps < 1 or self.num_clips < 1 or self.seed < 0:
            raise ValueError(f"steps and num_clips must be >= 1 and seed >= 0, got steps={self.steps}, "
                             f"num_clips={self.num_clips}, seed={self.seed}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        for name in ("timeline", "postfilter"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
            setattr(self, name, bool(getattr(self, name)))
        if self.mode not in ("t2av", "a2v", "v2a"):
            raise ValueError(f"mode must be t2av, a2v or v2a, got {self.mode!r}")
        check_scales(guidance_scale=self.guidance_scale, audio_guidance_scale=self.audio_guidance_scale,
                     modality_scale=self.modality_scale)
        self.guidance_interval = check_interval(default_interval(self.mode != "t2av") if self.guidance_interval is None
                                                else self.guidance_interval)
        if self.duration is not None and not (isinstance(self.duration, (int, float, np.number))
                                              and math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration!r}")
        return self


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


def weights_file(weights_dir: Path) -> Path:
    return Path(weights_dir) / "transformer" / "diffusion_pytorch_model.safetensors"


def load_pipeline(weights_dir=DEFAULT_WEIGHTS, device: str = "auto", sampler: str = "euler",
                  compile: bool = False, postfilter: bool = True) -> AVGenPipeline:
    """A weights folder (as written by `AVGenPipeline.save_pretrained`) -> ready pipeline, offline; with its
    postfilter unless `postfilter=False` (fitting a new one must not depend on the old one)."""
    from avgen.train.checkpoint import check_weights_folder  # names the file; safetensors only

    weights_dir = Path(weights_dir)
    if not weights_file(weights_dir).is_file():
        raise FileNotFoundError(f"no model weights at {weights_dir} (expected {weights_file(weights_dir)}); "
                                "train one with `avgen train` and `avgen export RUN --out DIR`, then pass --weights DIR")
    check_weights_folder(weights_dir)  # wrong, missing or extra tensors are refused before loading
    # fp32 whatever the stored dtype (exports may be fp16); the device decides compute precision
    transformer = AVDiT.from_pretrained(weights_dir / "transformer", local_files_only=True, use_safetensors=True,
                                        torch_dtype=torch.float32)
    pipe = AVGenPipeline.from_transformer(transformer.eval(), sampler)
    if postfilter:
        pipe.load_postfilter(weights_dir)
    pipe = pipe.to(resolve_device(device))
    pipe.transformer = maybe_compile(pipe.transformer, compile)
    return pipe


def generate(pipe: AVGenPipeline, settings: GenerateSettings, audio=None, video=None,
             on_step: Callable[[int, int], None] | None = None) -> list[Clip]:
    """Clips for `settings`; clip i uses seed `settings.seed + i` alone, so it does not depend on
    how many clips are made together. `audio` (S,) / `video` (T, H, W, C) make it A2V / V2A.
    `on_step(done, total)` is called after every sampling step (a progress bar's feed)."""
    n = settings.check().num_clips
    pipe.set_sampler(settings.sampler)
    generators = [torch.Generator("cpu").manual_seed(settings.seed + i) for i in range(n)]
    out = pipe([settings.prompt] * n, generator=generators, audio=audio, video=video, **sampling_kwargs(settings),
               callback_on_step_end=None if on_step is None else _step_reporter(on_step, settings.steps))
    labels, clips = pipe.parse_prompts(settings.prompt, 1)[0], []
    for i in range(n):
        meta = {"seed": settings.seed + i, "mode": settings.mode}
        if out.timeline is not None:  # the plan as labelled events (none when unknown or the prompt is null)
            meta["timeline"] = events_from_slots(out.timeline[i], labels, pipe.transformer.config.token_seconds)
        clips.append(Clip(out.frames[i].astype(np.float32), out.audio[i].astype(np.float32), out.fps,
                          out.sample_rate, prompt=settings.prompt, meta=meta))
    return clips


def sampling_kwargs(settings: GenerateSettings) -> dict:
    """The pipeline-call arguments that `settings` decides (all but prompts, seeds and given modalities;
    the sampler is set with `pipe.set_sampler`)."""
    return dict(duration_s=settings.duration, num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale, audio_guidance_scale=settings.audio_guidance_scale,
                modality_scale=settings.modality_scale, guidance_interval=settings.guidance_interval,
                timeline="auto" if settings.timeline else None, postfilter=settings.postfilter)


def _step_reporter(on_step: Callable[[int, int], None], steps: int) -> Callable:
    """A step-end callback counting in the steps asked for (Heun runs ~2 scheduler steps per step)."""
    def report(pipe, i, t, tensors):
        on_step(max(1, round((i + 1) * steps / pipe.num_timesteps)), steps)
        return {}
    return report


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    import diffusers
    import torchaudio
    import avgen

    return {"avgen": avgen.__version__, "torch": torch.__version__, "torchaudio": torchaudio.__version__,
            "diffusers": diffusers.__version__, "numpy": np.__version__, "python": platform.python_version()}


def output_paths(out: Path, n: int) -> list[Path]:
    """clip.mp4 for one clip; clip_000.mp4, clip_001.mp4, ... for several."""
    out = Path(out)
    return [out] if n == 1 else [out.with_name(f"{out.stem}_{i:03d}{out.suffix}") for i in range(n)]


def write_outputs(clips: list[Clip], out, settings: GenerateSettings, weights_dir, device: str) -> list[Path]:
    """Each clip as an mp4 (upscaled for viewing) plus a JSON sidecar that reproduces it."""
    from avgen.data.io import write_mp4

    weights = {"path": str(Path(weights_dir).resolve()), "sha256": sha256_file(weights_file(weights_dir))}
    weights["postfilter"] = AVGenPipeline.postfilter_record(weights_dir, settings.postfilter, settings.mode)
    paths = output_paths(Path(out), len(clips))
    for clip, path in zip(clips, paths):
        write_mp4(clip, path)
        sidecar = {"prompt": settings.prompt, "seed": clip.meta["seed"], "settings": settings.to_dict(),
                   "device": device, "weights": weights, "versions": package_versions(),
                   "fps": clip.fps, "sample_rate": clip.sample_rate, "num_frames": clip.num_frames}
        if "timeline" in clip.meta:  # the events a timeline model was asked to place: [label, start_s, end_s]
            sidecar["timeline"] = [list(e) for e in clip.meta["timeline"]]
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return paths
