"""Training objective: rectified flow with a noise level per modality and an x0-predicting network.

    x_t = (1 - t) x0 + t * noise,   t in [0, 1], t = 1 is pure noise;   velocity v = noise - x0.

The network predicts x0; the loss is the velocity MSE of that prediction,
    v_pred = (x_t - x0_pred) / max(t, t_min),
which equals an x0 MSE weighted by 1 / max(t, t_min)^2 (JiT's choice: x-prediction, v-loss).

Per sample, the two modalities get independent logit-normal times; with probability p_clean one
modality (never both) is held clean (t = 0) and contributes no loss: that teaches audio-to-video
and video-to-audio to the same model. The prompt is dropped (null prompt) with p_drop_prompt and
the cross-modal path with p_drop_cross, so both can be guided at sampling time.

Randomness comes only from the `generator` argument. Passing a list of generators (one per sample,
e.g. keyed by the global sample index) makes every draw of a sample independent of batch size
and of how a batch is split over processes. `draw_randomness` makes all of a batch's draws up front
(the training loop's data workers call it, so the draws cost the main process nothing);
`training_loss(..., draws=)` then computes exactly what it computes from the generators.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from avgen.model.config import ObjectiveConfig
from avgen.model.timeline import unknown_slot
from avgen.model.transformer import MEDIA

Generator = torch.Generator | list[torch.Generator]


# ---------------------------------------------------------------------------- random draws
def _draw(generator: Generator, batch: int, draw, device) -> torch.Tensor:
    """`draw(gen, n)` for the whole batch from one generator, or per sample from a list of them."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for a batch of {batch}")
        return torch.cat([draw(g, 1) for g in generator]).to(device)
    return draw(generator, batch).to(device)


def _uniform(generator: Generator, batch: int, device) -> torch.Tensor:
    return _draw(generator, batch, lambda g, n: torch.rand(n, generator=g, device=g.device), device)


def _normal(generator: Generator, shape: tuple[int, ...], device) -> torch.Tensor:
    """(B, *shape[1:]) standard normal."""
    return _draw(generator, shape[0], lambda g, n: torch.randn((n, *shape[1:]), generator=g, device=g.device),
                 device)


def sample_times(batch: int, generator: Generator, cfg: ObjectiveConfig = ObjectiveConfig(),
                 device="cpu") -> dict[str, torch.Tensor]:
    """{video, audio}: (B,) noise levels; logit-normal each (a share p_low uniform in (0, t_low)
    instead), one modality set to 0 with p_clean."""
    t = {m: torch.sigmoid(cfg.t_mean + cfg.t_std * _normal(generator, (batch,), device)) for m in MEDIA}
    u = _uniform(generator, batch, device)  # one draw decides which modality (if any) is held clean
    if cfg.p_low > 0:  # drawn after u, so p_low = 0 leaves every other draw of a run as it was
        for m in MEDIA:
            low = _uniform(generator, batch, device) < cfg.p_low
            t[m] = torch.where(low, cfg.t_low * _uniform(generator, batch, device), t[m])
    clean = {"video": u < cfg.p_clean, "audio": (u >= cfg.p_clean) & (u < 2 * cfg.p_clean)}
    return {m: torch.where(clean[m], torch.zeros_like(t[m]), t[m]) for m in MEDIA}


def prompt_drop_rate(t: dict[str, torch.Tensor], cfg: ObjectiveConfig) -> torch.Tensor | float:
    """(B,) probability of the null prompt per sample: `p_drop_prompt_given` where one modality is
    held clean (t = 0), else `p_drop_prompt`."""
    if cfg.p_drop_prompt_given < 0:
        return cfg.p_drop_prompt
    given = (t["video"] == 0) | (t["audio"] == 0)
    return torch.where(given, torch.full_like(t["video"], cfg.p_drop_prompt_given),
                       torch.full_like(t["video"], cfg.p_drop_prompt))


@dataclass
class Draws:
    """Every random draw of one batch's loss, in the order `training_loss` makes them."""

    t: dict[str, torch.Tensor]  # {m: (B,)} noise levels (0 = held clean)
    noise: dict[str, torch.Tensor] | None  # {m: (B, N, D_m)}; None = to be drawn by the caller
    keep_prompt: torch.Tensor  # (B,) bool
    cross_modal: torch.Tensor  # (B,) bool
    keep_timeline: torch.Tensor | None = None  # (B,) bool; drawn only for a model with the timeline input

    def to(self, device, non_blocking: bool = False) -> "Draws":
        return self.map(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Draws":  # DataLoader(pin_memory=True) calls this on custom batch types
        return self.map(lambda x: x.pin_memory())

    def map(self, fn) -> "Draws":
        """`fn` applied to every tensor (the per-modality ones too)."""
        def one(v):
            return {k: fn(x) for k, x in v.items()} if isinstance(v, dict) else None if v is None else fn(v)

        return Draws(**{f.name: one(getattr(self, f.name)) for f in fields(self)})


def draw_randomness(generator: Generator, batch: int, token_shapes: dict[str, tuple[int, int]],
                    cfg: ObjectiveConfig = ObjectiveConfig(), timeline: bool = False, device="cpu",
                    noise: bool = True) -> Draws:
    """All draws of one batch's loss: times, noise of shape (B, *token_shapes[m]), prompt and
    cross-modal dropout, and (timeline=True) timeline dropout. The order is part of the contract:
    with the same generator(s) it is what `training_loss` draws itself. Everything is computed on the
    generators' device and moved to `device` at the end, so draws made ahead (in a data worker, on
    the CPU) equal draws made in the step, whatever device trains. noise=False skips the noise (the
    caller draws it elsewhere, e.g. on the training device) and leaves `Draws.noise` None; the
    draws after it then come from other positions of the stream."""
    own = (generator[0] if isinstance(generator, (list, tuple)) and generator else generator)
    here = own.device if isinstance(own, torch.Generator) else torch.device("cpu")
    t = sample_times(batch, generator, cfg, here)
    noise = {m: _normal(generator, (batch, *token_shapes[m]), here) for m in MEDIA} if noise else None
    keep_prompt = _uniform(generator, batch, here) >= prompt_drop_rate(t, cfg)
    cross_modal = _uniform(generator, batch, here) >= cfg.p_drop_cross
    keep_timeline = (_uniform(generator, batch, here) >= cfg.p_drop_timeline) if timeline else None
    return Draws(t, noise, keep_prompt, cross_modal, keep_timeline).to(device)


# ---------------------------------------------------------------------------- prompts
def encode_prompts(labels_list: list[list[str]], vocab, max_events: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Label sequences -> (prompt_ids (B, max_events) long, prompt_mask (B, max_events) bool).

    An empty list is the null prompt (mask all False; the model substitutes its null token).
    """
    index = {label: i for i, label in enumerate(vocab)}
    ids = torch.zeros(len(labels_list), max_events, dtype=torch.long)
    mask = torch.zeros(len(labels_list), max_events, dtype=torch.bool)
    for row, labels in enumerate(labels_list):
        if len(labels) > max_events:
            shown = " ".join(labels) if len(labels) <= 12 else " ".join(labels[:12]) + " ..."
            raise ValueError(f"prompt {shown!r} has {len(labels)} events; the model knows {max_events}")
        unknown = [lab for lab in labels if lab not in index]
        if unknown:
            raise ValueError(f"unknown label(s) {unknown[:5]}{' ...' * (len(unknown) > 5)}; "
                             f"the model knows {list(vocab)}")
        ids[row, :len(labels)] = torch.tensor([index[lab] for lab in labels], dtype=torch.long)
        mask[row, :len(labels)] = True
    return ids.to(device), mask.to(device)


# ---------------------------------------------------------------------------- loss
def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, t (B,) broadcast over tokens."""
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * noise


def x0_to_velocity(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_min: float = 0.0) -> torch.Tensor:
    """v = (x_t - x0) / t: the velocity that an x0 prediction implies (t clamped below at t_min)."""
    t = t.clamp_min(t_min).view(-1, *([1] * (x0.ndim - 1)))
    return (x_t - x0) / t


def training_loss(model, codec, frames: torch.Tensor, audio: torch.Tensor, prompt_ids: torch.Tensor,
                  prompt_mask: torch.Tensor, generator: Generator,
                  cfg: ObjectiveConfig = ObjectiveConfig(),
                  slots: torch.Tensor | None = None,
                  draws: Draws | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The rectified-flow loss of one batch of clips: frames (B, T, H, W, C) in [0, 1], audio (B, S).

    Returns (scalar loss = video loss + audio loss, stats). A modality's loss is averaged over the
    whole batch with clean samples counting zero, so its scale does not depend on how many were
    held clean; `stats` reports each modality's mean over the samples where it was noisy.
    `draws` (from `draw_randomness`, on this device) replaces the draws from `generator`.
    """
    batch, device = frames.shape[0], frames.device
    with torch.no_grad():
        x0 = codec.encode(frames, audio)  # {video: (B, N, Dv), audio: (B, N, Da)}
    if draws is None:
        draws = draw_randomness(generator, batch, {m: tuple(x0[m].shape[1:]) for m in MEDIA}, cfg,
                                timeline=slots is not None, device=device)
    elif draws.noise is None:
        raise ValueError("draws without noise (noise=False): draw the noise and set draws.noise first")
    elif any(draws.noise[m].shape != x0[m].shape for m in MEDIA) or (draws.keep_timeline is None) != (slots is None):
        raise ValueError("draws do not fit this batch: noise shapes "
                         f"{ {m: tuple(draws.noise[m].shape) for m in MEDIA} } for tokens "
                         f"{ {m: tuple(x0[m].shape) for m in MEDIA} }, timeline draws given: "
                         f"{draws.keep_timeline is not None}, slots given: {slots is not None}")
    t, noise = draws.t, draws.noise  # {m: (B,)}, {m: (B, N, D_m)}
    x_t = {m: add_noise(x0[m], noise[m], t[m]) for m in MEDIA}
    extra = {}
    if slots is not None:  # (B, N) slot ids, -1 = not known; drawn only here, so other runs keep their stream
        unknown = unknown_slot(getattr(model, "module", model).config.max_events)  # through a DDP wrapper too
        keep = draws.keep_timeline[:, None]  # (B, 1)
        extra["slots"] = torch.where(keep & (slots >= 0), slots, torch.full_like(slots, unknown))
    labelled = cfg.label_weight > 0 and slots is not None
    if labelled:
        if getattr(model, "module", model).probe is None:
            raise ValueError("objective.label_weight > 0 needs a model with the label probe (model.label_probe=true)")
        extra["label_logits"] = True
    pred = model(x_t["video"], x_t["audio"], t["video"], t["audio"], prompt_ids,
                 prompt_mask.bool() & draws.keep_prompt[:, None], cross_modal=draws.cross_modal, **extra)
    loss, stats = torch.zeros((), device=device), {}
    for m in MEDIA:
        v_pred = x0_to_velocity(x_t[m], pred[m].float(), t[m], cfg.t_min)
        per_sample = (v_pred - (noise[m] - x0[m])).pow(2).mean(dim=(1, 2))  # (B,)
        noisy = (t[m] > 0).float()  # (B,): a modality held clean has nothing to learn
        loss = loss + (per_sample * noisy).mean()
        stats[f"loss_{m}"] = float((per_sample.detach() * noisy).sum() / noisy.sum().clamp_min(1))
    if labelled:
        label_loss, label_stats = label_probe_loss(pred, slots, prompt_ids, t)
        loss = loss + cfg.label_weight * label_loss
        stats.update(label_stats)
    stats["loss"] = float(loss.detach())
    return loss, stats


def label_probe_loss(pred: dict[str, torch.Tensor], slots: torch.Tensor, prompt_ids: torch.Tensor,
                     t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the label probe against the clip's ground truth (0 outside events, 1 + the label
    id of the event a token is in; the prompt ids, before any prompt dropout, are the clip's true labels
    in order), on the tokens of every sample with a modality held clean: there the clean stream must say
    what its own content shows, and the noisy one what the clean one says (which it can only read
    across, through the cross-modal attention of the blocks before the probe). Tokens of clips without
    events (slot -1) do not count. Averaged over the counted tokens; 0 (graph kept) when none count."""
    index = (slots - 1).clamp(0, prompt_ids.shape[1] - 1)  # (B, N)
    truth = torch.where(slots > 0, torch.gather(prompt_ids, 1, index) + 1, torch.zeros_like(slots))
    counted, stats = 0, {}
    loss = torch.zeros((), device=slots.device)
    given = (t["video"] == 0) | (t["audio"] == 0)  # (B,): A2V / V2A samples
    for m in MEDIA:
        logits = pred[f"{m}_labels"].float()  # (B, N, 1 + V)
        use = given[:, None] & (slots >= 0)  # (B, N)
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), truth, reduction="none")  # (B, N)
        loss = loss + (ce * use).sum() + 0.0 * logits.sum()  # the 0 term keeps both heads in every graph
        hits = (logits.argmax(-1) == truth) & use
        stats[f"label_acc_{m}"] = float(hits.sum() / use.sum().clamp_min(1))
        counted += int(use.sum())
    stats["label_ce"] = float(loss.detach() / max(1, counted))
    return loss / max(1, counted), stats
