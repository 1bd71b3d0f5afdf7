"""Model surgery for fine-tuning: a pretrained model grown to take new inputs or more blocks, each
new path starting at zero so that the grown model computes exactly what the pretrained one did; and
a fresh model built from a config."""
from __future__ import annotations

import dataclasses
from collections import Counter

import torch

from avgen.data import make_dataset
from avgen.data.io import LUMA
from avgen.model.config import CodecConfig, ModelConfig, spec_from_dict
from avgen.model.timeline import LayoutPrior
from avgen.model.transformer import AVDiT
from avgen.train.config import TrainConfig

GROWABLE = {"count_cond": ("count_embed.",), "timeline_cond": ("slot_embed.", "slot_label."),
            "label_probe": ("probe.",)}


def grow(model: AVDiT, wanted: dict[str, bool], log, layout_prior: dict | None = None, depth: int | None = None,
         seed: int = 0) -> AVDiT:
    """Turn on zero-initialised inputs (`GROWABLE`) the pretrained model lacks, and (depth > the
    pretrained depth) append blocks after its last one. Each new embedding starts at zero, and each
    new block's AdaLN-Zero gates and cross-modal gates do too (its other weights are drawn from
    `seed`), so a new block passes every stream through unchanged: the grown model computes exactly
    what the pretrained one did, and training then opens the new paths."""
    add = [k for k, on in wanted.items() if on and not model.config.get(k, False)]
    old_depth = model.config.depth
    if depth is not None and depth < old_depth:
        raise ValueError(f"--init-from: model.depth {depth} is below the pretrained model's {old_depth}; "
                         "a model can grow deeper, not shallower")
    deeper = depth is not None and depth > old_depth
    if not add and not deeper:
        return model
    config = {k: v for k, v in model.config.items() if k != "_use_default_values"}  # else the flags stay default
    config.update({k: True for k in add})
    if deeper:
        config["depth"] = depth
    if "timeline_cond" in add:
        if layout_prior is None:
            raise ValueError("adding timeline_cond needs a layout prior measured on the dataset")
        config["layout_prior"] = layout_prior
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = AVDiT.from_config(config)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    new = tuple(p for k in add for p in GROWABLE[k]) + tuple(f"blocks.{i}." for i in range(old_depth, depth or 0))
    if unexpected or not missing or any(not m.startswith(new) for m in missing):
        raise ValueError(f"cannot grow the pretrained model ({add}, depth {old_depth} -> {depth}): missing {missing}, "
                         f"unexpected {unexpected}")
    what = [*add] + ([f"blocks {old_depth}-{depth - 1} (depth {old_depth} -> {depth})"] if deeper else [])
    log(f"--init-from: the pretrained model gets {', '.join(what)}, starting as identity / zero")
    return grown


def colour(model: AVDiT, channels: int, log) -> AVDiT:
    """A pretrained grey model made to take and draw RGB frames (fine-tuning on a colour folder with
    `--set spec.channels=3`): the video embedding reads each pixel's luma (its grey weights times the
    luma weights per channel) and the video output writes its grey into all three channels, so on grey
    frames the coloured model computes exactly what the pretrained one did; training then learns colour.
    Every other weight is kept. Only grey -> RGB: a coloured model stays coloured."""
    spec = dict(model.config.clip_spec)
    if channels <= spec["channels"]:
        return model
    if (spec["channels"], channels) != (1, 3):
        raise ValueError(f"cannot turn a {spec['channels']}-channel model into a {channels}-channel one")
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    config["clip_spec"] = {**spec, "channels": channels}
    config["video_dim"] = model.config.video_dim * channels
    coloured = AVDiT.from_config(config)
    state = model.state_dict()
    luma = torch.tensor(LUMA, dtype=state["embed.video.weight"].dtype)
    # tokens are laid out (frame, h, w, c) with c innermost (`AVCodec.encode_video`)
    state["embed.video.weight"] = (state["embed.video.weight"][:, :, None] * luma).flatten(1)
    for key in ("final.video.linear.weight", "final.video.linear.bias"):
        state[key] = state[key].repeat_interleave(channels, dim=0)
    coloured.load_state_dict(state)
    log(f"--init-from: the pretrained grey model takes and draws RGB (spec.channels 1 -> {channels}): it reads "
        "luma and writes grey until training teaches it colour")
    return coloured


def config_of_model(cfg: TrainConfig, model: AVDiT) -> TrainConfig:
    """`cfg` with the size, codec and clip spec of a pretrained model (they are not ours to change)."""
    mc = model.config
    size = ModelConfig(**{f.name: mc[f.name] for f in dataclasses.fields(ModelConfig)})
    return dataclasses.replace(cfg, model=size, codec=CodecConfig.from_dict(mc["codec"]),
                               spec=spec_from_dict(mc["clip_spec"]))


def build_model(cfg: TrainConfig, ds) -> AVDiT:
    """A fresh model; its initialisation depends on `cfg.seed` only (global RNG state is untouched)."""
    prior = layout_prior(ds, cfg) if cfg.model.timeline_cond else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return AVDiT.from_preset(cfg.model, cfg.spec, ds.vocab, ds.max_events, codec=cfg.codec,
                                 layout_prior=prior, example_prompts=example_prompts(ds))


def example_prompts(ds, n: int = 6, look: int = 400) -> list[str]:
    """The dataset's most frequent prompts among its first clips (what the studio offers as examples)."""
    seen = Counter(ds[i].prompt for i in range(min(look, len(ds))))
    return [p for p, _ in seen.most_common() if p][:n]


def adapt_vocabulary(model: AVDiT, ds, cfg: TrainConfig, log, seed: int = 0) -> AVDiT:
    """A pretrained model made ready for a dataset with words it does not know (fine-tuning on a user's
    folder): new label embeddings appended (drawn as a fresh model's are), every other weight kept, the
    label probe (if any) widened with zero rows; the layout prior takes the dataset's event lengths for
    its new labels, and the examples become the dataset's. A dataset with more labels per clip than the
    model takes is refused (that needs a model trained from scratch)."""
    old = list(model.config.vocab)
    if ds.max_events > model.config.max_events:
        raise ValueError(f"the dataset's captions have up to {ds.max_events} labels; the pretrained model takes at "
                         f"most {model.config.max_events}: train from scratch (e.g. --preset folder-cpu)")
    new = [w for w in ds.vocab if w not in old]
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    config["vocab"], config["example_prompts"] = old + new, example_prompts(ds)
    if new and config.get("timeline_cond") and config.get("layout_prior"):
        theirs = LayoutPrior.measure([c for c in (ds[i] for i in range(min(2000, len(ds)))) if c.events],
                                     cfg.codec.frames_per_token, getattr(ds, "min_gap_frames", 1)).to_dict()
        mine = config["layout_prior"]
        config["layout_prior"] = {"counts": {**mine["counts"], **{w: h for w, h in theirs["counts"].items() if w in new}},
                                  "min_gap": min(mine["min_gap"], theirs["min_gap"])}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapted = AVDiT.from_config(config)
    state = adapted.state_dict()
    for key, value in model.state_dict().items():
        if state[key].shape == value.shape:
            state[key] = value
        elif key == "label_embed.weight" or key.startswith("probe."):  # rows for the old labels (+ "no event")
            state[key][: value.shape[0]] = value
        else:
            raise ValueError(f"cannot adapt the pretrained model to the dataset's vocabulary: {key} "
                             f"{tuple(value.shape)} -> {tuple(state[key].shape)}")
    adapted.load_state_dict(state)
    if new:
        log(f"--init-from: the vocabulary grows by {len(new)} label(s) ({', '.join(new[:8])}"
            f"{' ...' if len(new) > 8 else ''}); their embeddings start fresh, every other weight is kept")
    return adapted



def layout_prior(ds, cfg: TrainConfig, num_clips: int = 2000) -> dict:
    """Event lengths of the first training clips (stored with the weights: text-to-AV draws timelines)."""
    if getattr(ds, "augment_speed", 0) or getattr(ds, "augment_shift_px", 0):  # the lengths as recorded
        ds = make_dataset(cfg.dataset, split=ds.split, seed=ds.seed, spec=ds.spec, data_root=ds.root)
    clips = [ds[i] for i in range(min(num_clips, len(ds)))]
    if not any(c.events for c in clips):
        raise ValueError(f"timeline_cond needs ground-truth events; dataset {cfg.dataset} has none")
    return LayoutPrior.measure(clips, cfg.codec.frames_per_token, getattr(ds, "min_gap_frames", 1)).to_dict()


__all__ = ["GROWABLE", "adapt_vocabulary", "build_model", "example_prompts", "config_of_model", "grow", "layout_prior"]
