"""Clips longer than the model was trained on, as overlapping windows, each continuing the last.

A network trained on 3-s clips falls apart on a 12-s sequence (its attention has never seen that many
tokens, and a prompt of eight labels is more than it takes). So a long clip is made window by window,
each window the trained length at most: the first window is sampled as usual; each later one holds
its first `overlap` tokens at the previous window's result, in both modalities (`sample(known=)`,
the replacement method), so the picture and the sound continue across the seam, and samples the rest.

The timeline is drawn once for the whole clip from the prompt (all of its labels), so the plan of
events does not depend on where the windows fall. Each window then gets the events it overlaps as
its own prompt, at most the model's `max_events`, and window ends are placed in the silence between
events whenever one can be, so that no event is split between two windows. Where the plan has
nothing (a window's new part after silence, or the stretch before a late first event), the silence
next to it is held instead of sampled: the network was trained on clips that always hold an event,
and sampled an event-free window with one invented (measured: docs/experiments.md, 2026-12-07).
Cost: linear in duration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from avgen.data.prompt import Prompt
from avgen.model.timeline import LayoutPrior, unknown_slot
from avgen.model.transformer import MEDIA

OVERLAP_S = 1.0  # context carried into each window: about one event, so a seam sees what came before
# A long clip takes up to this share of the labels its length would hold at the model's own density
# (8 labels in 12 s for a model of 3 labels in 3 s), so its timeline leaves room between events.
LONG_LABEL_SHARE = 2 / 3


def long_capacity(max_events: int, num_tokens: int, window: int) -> int:
    """How many labels a clip of `num_tokens` takes (the model's own `max_events` up to its length)."""
    if num_tokens <= window:
        return max_events
    return max(max_events, int(max_events * num_tokens * LONG_LABEL_SHARE / window))


@dataclass(frozen=True)
class Window:
    start: int  # first token (context from here)
    end: int  # one past the last token
    new_from: int  # first token sampled (tokens before it are the previous window's)


def events_of(slots: np.ndarray) -> list[tuple[int, int, int]]:
    """(N,) global slot ids -> [(slot id, first token, end token)] of each event, in order."""
    out = []
    for k in sorted(int(v) for v in np.unique(slots) if v > 0):
        where = np.flatnonzero(slots == k)
        out.append((k, int(where[0]), int(where[-1]) + 1))
    return sorted(out, key=lambda e: e[1])


def plan_windows(slots: np.ndarray | None, num_tokens: int, window: int, overlap: int, max_events: int) -> list[Window]:
    """Windows of at most `window` tokens covering [0, num_tokens), each starting `overlap` tokens before
    the previous one's end. A window ends at the latest token that (a) keeps at most `max_events`
    events inside it and (b) falls in silence (no event split), relaxing (b) when no such end exists.
    `slots` None (no timeline): fixed windows."""
    if num_tokens <= window:
        return [Window(0, num_tokens, 0)]
    if not 0 <= overlap < window // 2:
        raise ValueError(f"overlap {overlap} must be under half the window ({window} tokens)")
    events = events_of(slots) if slots is not None else []
    out, start, new_from = [], 0, 0
    while True:
        last = min(start + window, num_tokens)
        if last == num_tokens and _count(events, start, last) <= max_events:
            out.append(Window(start, last, new_from))
            return out
        # the latest end that keeps at most max_events events in the window and falls in silence (a shorter
        # window rather than a split event); only when no end in silence exists, the latest end at all
        ends = [e for e in range(last, new_from, -1) if _count(events, start, e) <= max_events]
        quiet = [e for e in ends if not any(a < e < b for _, a, b in events)]
        ranked = quiet or ends
        if not ranked:
            raise ValueError(f"the timeline has more than {max_events} events within {overlap + 1} tokens: "
                             "give the clip more time or fewer labels")
        end = ranked[0]
        out.append(Window(start, end, new_from))
        start, new_from = max(0, end - overlap), end


def _count(events, start: int, end: int) -> int:
    return sum(1 for _, a, b in events if a < end and b > start)


def local_timeline(slots: np.ndarray, labels: tuple[str, ...], w: Window) -> tuple[tuple[str, ...], np.ndarray]:
    """The window's own prompt (the labels of the events it overlaps, in order) and its slots renumbered
    for that prompt (global slot k + 1 = label k; silence stays 0)."""
    part = slots[w.start:w.end]
    ids = [k for k, _, _ in events_of(part)]
    local = np.zeros_like(part)
    for j, k in enumerate(ids):
        local[part == k] = j + 1
    return tuple(labels[k - 1] for k in ids), local


def check_context(latents, mask, x: dict[str, torch.Tensor], noisy: list[str]):
    """A pipeline call's context (`context_latents`, `context_mask`) checked against its tokens `x` and moved
    to their device -> (known tokens {modality: (B, N, D)}, mask (B, N) bool), or (None, None) without."""
    if latents is None and mask is None:
        return None, None
    if latents is None or mask is None or not isinstance(latents, dict):
        raise ValueError("context needs both context_latents={video, audio} and context_mask (B, N)")
    device = x["video"].device
    mask = torch.as_tensor(mask, dtype=torch.bool).to(device)
    if tuple(mask.shape) != tuple(x["video"].shape[:2]):
        raise ValueError(f"context_mask has shape {tuple(mask.shape)}, expected {tuple(x['video'].shape[:2])}")
    known = {}
    for m in noisy:
        if m not in latents or tuple(latents[m].shape) != tuple(x[m].shape):
            raise ValueError(f"context_latents[{m!r}] must have shape {tuple(x[m].shape)}")
        known[m] = latents[m].to(device, torch.float32)
    return known, mask


def sample_long(pipe, prompts: list[Prompt], negatives: list[Prompt], num_tokens: int, generator, latents,
                audio_latents, timeline, on_window: Callable | None, kwargs: dict):
    """The tokens of a clip longer than `pipe`'s model (an `AVGenPipeline`), from a prompt: the timeline
    drawn for the whole clip, then window after window (`plan_windows`), each a pipeline call that holds
    the previous window's last tokens as context -> ({video, audio} (B, N, D), slots (B, N) or None,
    seams: per sample, the seconds where each later window's new tokens began)."""
    batch, device = len(prompts), pipe._execution_device
    cfg = pipe.transformer.config
    window = pipe.codec.num_tokens()
    overlap = min(round(OVERLAP_S / cfg.token_seconds), window // 3)  # a model of short clips: a third of one
    slots = pipe.prepare_timeline(timeline, prompts, num_tokens, generator, None, None, "cpu")
    dims = pipe.codec.dims
    noise = {"video": pipe.prepare_latents(latents, (batch, num_tokens, dims["video"]), generator, device),
             "audio": pipe.prepare_latents(audio_latents, (batch, num_tokens, dims["audio"]), generator, device)}
    x = {m: torch.zeros_like(noise[m]) for m in MEDIA}
    unknown = unknown_slot(cfg.max_events)
    seams = []
    for b in range(batch):
        row = None if slots is None or bool((slots[b] == unknown).all()) else slots[b].numpy()
        lead, plan = plan_clip(row, num_tokens, window, overlap, cfg.max_events)
        seams.append([w.new_from * cfg.token_seconds for w in plan[1:]])
        for w in plan:
            if row is not None and w.new_from > 0 and not row[w.new_from - 1:w.end].any():
                # nothing planned here, after silence: held as the silence before it (a network trained on
                # clips that always have an event would invent one)
                for m in MEDIA:
                    x[m][b, w.new_from:w.end] = x[m][b, w.new_from - 1]
                if on_window is not None:
                    on_window(b, w, x)
                continue
            if row is None:  # no plan of events: the labels shared out by their place in the prompt
                labels = labels_by_place(prompts[b].labels, num_tokens, w)
                local = None if slots is None else slots[b, w.start:w.end]
            else:
                labels, local = local_timeline(row, prompts[b].labels, w)
            n = w.end - w.start
            out = pipe(Prompt(tuple(labels)), negative_prompt=negatives[b], duration_s=n * cfg.token_seconds,
                       latents=noise["video"][b:b + 1, w.start:w.end], audio_latents=noise["audio"][b:b + 1, w.start:w.end],
                       timeline=None if local is None else torch.as_tensor(local)[None], output_type="latent",
                       context_latents={m: x[m][b:b + 1, w.start:w.end] for m in MEDIA},
                       context_mask=(torch.arange(n) < w.new_from - w.start)[None], **kwargs)
            x["video"][b, w.start:w.end], x["audio"][b, w.start:w.end] = out.frames[0], out.audio[0]
            if w.start == lead.end and lead.end > 0:  # the silence before the first window: its first token, held
                for m in MEDIA:
                    x[m][b, :lead.end] = x[m][b, lead.end]
                if on_window is not None:
                    on_window(b, lead, x)
            if on_window is not None:
                on_window(b, w, x)
    return x, slots, seams


def plan_clip(row: np.ndarray | None, num_tokens: int, window: int, overlap: int, max_events: int):
    """(the lead-in, the windows) of a long clip: when the first event comes later than the first window
    could reach, the windows start `overlap` tokens before it, and the silence before them (the lead-in,
    Window(0, start, 0), maybe empty) is held rather than sampled."""
    first = events_of(row)[0][1] if row is not None and row.any() else 0
    start = 0 if first < window else first - overlap
    plan = [Window(w.start + start, w.end + start, w.new_from + start)
            for w in plan_windows(None if row is None else row[start:], num_tokens - start, window, overlap, max_events)]
    return Window(0, start, 0), plan


def edit_timeline(net, prompt: Prompt, free: np.ndarray, generator: torch.Generator | None) -> torch.Tensor | None:
    """(1, N) slots for temporal inpainting (`edit_slots`), the draw seeded by `generator`; None for a
    network without a timeline input or a layout prior."""
    cfg = net.config
    if not cfg.get("timeline_cond", False) or cfg.get("layout_prior") is None:
        return None
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
    slots = edit_slots(LayoutPrior.from_dict(cfg.layout_prior), prompt.labels, np.asarray(free, bool),
                       np.random.default_rng(seed), cfg.max_events)
    return torch.as_tensor(slots)[None]




def labels_by_place(labels: tuple[str, ...], num_tokens: int, w: Window) -> tuple[str, ...]:
    """Without a timeline: the labels whose even share of the clip (label i of L centred at (i + 1/2) N / L)
    falls in the window's new tokens."""
    at = [(i + 0.5) * num_tokens / len(labels) for i in range(len(labels))]
    return tuple(lab for lab, t in zip(labels, at) if w.new_from <= t < w.end)


def edit_slots(prior, labels: tuple[str, ...], free: np.ndarray, rng: np.random.Generator, max_events: int) -> np.ndarray:
    """Temporal inpainting's timeline: (N,) bool `free` (tokens to make anew) -> (N,) slots. Kept tokens are
    unknown (the model reads them from the context); the prompt's labels are shared, in order, between the
    runs of free tokens in proportion to their lengths, and each run's events are drawn from the layout
    `prior` (`LayoutPrior`) inside it. With no labels the free tokens are unknown too (an unprompted fill)."""
    slots = np.full(len(free), unknown_slot(max_events), dtype=np.int64)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], free.astype(np.int8), [0]])))
    runs = list(zip(edges[0::2], edges[1::2]))  # [start, end) of each free run
    if not labels or not runs:
        return slots
    lengths = np.array([b - a for a, b in runs], float)
    share = np.floor(np.cumsum(lengths) / lengths.sum() * len(labels) + 0.5).astype(int)  # labels up to each run
    first = 0
    for (a, b), upto in zip(runs, share):
        part = labels[first:upto]
        slots[a:b] = 0
        if part:
            local = prior.draw(part, b - a, rng)
            slots[a:b] = np.where(local > 0, local + first, 0)
        first = upto
    return slots


__all__ = ["LONG_LABEL_SHARE", "OVERLAP_S", "Window", "check_context", "edit_slots", "edit_timeline", "events_of",
           "labels_by_place", "local_timeline", "long_capacity", "plan_clip", "plan_windows", "sample_long"]
