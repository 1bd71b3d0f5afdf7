"""What a sampling call is conditioned on, built once per call: the prompts (parsed by the model's
vocabulary, encoded to ids), the timeline (which prompt label is active at each token), and the
prompt stream's keys and values.

Timelines (`avgen.model.timeline`): for text-to-AV drawn from the layout prior stored with the
weights (event lengths per label, measured on the training data), seeded by each sample's own
generator; with a given modality (A2V / V2A), read from that modality's events by the evaluation
suite's own onset detector (`avgen.signal`), so the generated modality follows the given one's
timing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avgen.data.clip import ClipSpec
from avgen.data.prompt import Prompt, Vocabulary
from avgen.model.device import autocast
from avgen.model.objective import encode_prompts
from avgen.model.timeline import LayoutPrior, slots_from_events, unknown_slot
from avgen.model.transformer import AVDiT, Modulation, PromptStates
from avgen.signal.onsets import AVSignal, detect_events, grey, tracks

MEDIA = ("video", "audio")


def vocabulary_of(net: AVDiT) -> Vocabulary:
    """The prompt vocabulary a network was trained with (stored in its config)."""
    return Vocabulary(tuple(net.config.vocab), int(net.config.max_events))


def parse_prompts(vocabulary: Vocabulary, prompt, batch: int | None = None) -> list[Prompt]:
    """A prompt (str / Prompt / None), or a list of them (one per sample), -> one `Prompt` per sample."""
    prompts = prompt if isinstance(prompt, list) else [prompt] * (batch or 1)
    if batch is not None and len(prompts) != batch:
        raise ValueError(f"{len(prompts)} prompts for a batch of {batch}")
    return [vocabulary.parse(p) for p in prompts]


def encode(prompts: list[Prompt], vocabulary: Vocabulary, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Parsed prompts -> (ids (B, P) long, mask (B, P) bool) on `device`."""
    return encode_prompts([list(p.labels) for p in prompts], vocabulary.labels, vocabulary.max_events, device)


@dataclass
class Conditioning:
    """Everything but the tokens that a denoising step feeds the network, the same at every step:
    prompt ids and masks of the conditional and unconditional passes, the timeline slots (None for a
    network without that input), and the prompt stream's keys and values of the [cond | uncond] rows
    (`encode_states`)."""

    cond: tuple[torch.Tensor, torch.Tensor]  # (ids (B, P), mask (B, P))
    uncond: tuple[torch.Tensor, torch.Tensor]
    slots: torch.Tensor | None = None  # (B, N)
    states: PromptStates | None = None

    def encode_states(self, net: AVDiT) -> "Conditioning":
        """The prompt stream through every block, for [cond | uncond], once per call: it does not change
        across denoising steps (see `AVDiT.encode_prompt_states`)."""
        ids, mask = (torch.cat([self.cond[i], self.uncond[i]]) for i in (0, 1))
        with autocast(ids.device):
            self.states = net.encode_prompt_states(ids, mask)
        return self

    def modulation_table(self, net: AVDiT, t_steps: list[dict[str, float]]) -> Modulation:
        """The media streams' AdaLN outputs for the [cond | uncond] rows of the steps in `t_steps` (its
        step i: rows i * 2B ... (i + 1) * 2B), computed at once: they depend only on each row's noise
        levels and label count, both known before the loop. One matmul per layer replaces one per layer
        per step."""
        mask = torch.cat([self.cond[1], self.uncond[1]])  # (2B, P)
        per_step = mask.shape[0]
        device = mask.device
        t = {m: torch.tensor([ts[m] for ts in t_steps], device=device).repeat_interleave(per_step) for m in MEDIA}
        with autocast(device):
            return net.modulation(t["video"], t["audio"], mask.repeat(len(t_steps), 1))


# ---------------------------------------------------------------------------- timelines
def prepare_timeline(net: AVDiT, spec: ClipSpec, frames_per_token: int, timeline, prompts: list[Prompt],
                     num_tokens: int, generator, video, audio, device) -> torch.Tensor | None:
    """(B, N) slots for a timeline network, else None. "auto": for text-to-AV drawn from the stored
    layout prior (seeded by each sample's generator, before its noise; unknown for weights that store
    none); with a given modality (`video` (B, T, H, W, C) / `audio` (B, S) arrays), read from its
    detected events (`timeline_from_given`; with the null prompt the slots carry no labels). Text-to-AV
    with the null prompt: unknown. None: unknown everywhere. Or the caller's (B, N) / (N,) slot ids.
    Without a generator the draw uses torch's global RNG."""
    cfg = net.config
    batch = len(prompts)
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
    if video is not None or audio is not None:
        rows = timeline_from_given(net, spec, frames_per_token, video, audio, prompts, num_tokens)
    elif cfg.get("layout_prior") is None:  # a model built without data (tests, by hand): nothing to draw from
        return torch.full((batch, num_tokens), unknown, dtype=torch.long, device=device)
    else:
        prior = LayoutPrior.from_dict(cfg.layout_prior)
        gens = generator if isinstance(generator, list) else [generator] * batch
        rows = []
        for p, gen in zip(prompts, gens):
            seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen,  # first from each generator
                                     device=gen.device if gen is not None else "cpu"))
            rows.append(prior.draw(p.labels, num_tokens, np.random.default_rng(seed)) if p.labels
                        else np.full(num_tokens, unknown, dtype=np.int64))
    return torch.as_tensor(np.stack(rows), dtype=torch.long, device=device)


def timeline_from_given(net: AVDiT, spec: ClipSpec, frames_per_token: int, video, audio, prompts: list[Prompt],
                        num_tokens: int) -> list[np.ndarray]:
    """A2V / V2A: the given modality's events, found by the evaluation suite's onset detector, as slots
    for the prompt's labels in order. Unknown where they cannot be matched: a count other than the
    prompt's, or more events than the model takes. `video` / `audio`: float arrays with a batch axis."""
    cfg = net.config
    m = "video" if video is not None else "audio"
    given = np.asarray(video if video is not None else audio)
    rows = []
    for p, x in zip(prompts, given):
        frames = grey(x) if m == "video" else np.zeros((num_tokens * frames_per_token, 1, 1), np.float32)
        sound = x if m == "audio" else np.zeros(round(len(frames) / spec.fps * spec.sample_rate), np.float32)
        sig = AVSignal(frames, np.arange(len(frames)) / spec.fps, float(spec.fps), sound, spec.sample_rate)
        events = detect_events(tracks(sig)[m])
        if (p.labels and len(events) != len(p.labels)) or len(events) > cfg.max_events:
            rows.append(np.full(num_tokens, unknown_slot(cfg.max_events), dtype=np.int64))
        else:
            rows.append(slots_from_events([(None, e.onset_s, e.end_s) for e in events], num_tokens,
                                          cfg.token_seconds))
    return rows


__all__ = ["Conditioning", "encode", "parse_prompts", "prepare_timeline", "timeline_from_given", "vocabulary_of"]
