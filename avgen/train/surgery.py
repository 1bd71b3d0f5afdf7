"""Model surgery for fine-tuning: a pretrained model grown to take new inputs or more blocks, each
new path starting at zero so that the grown model computes exactly what the pretrained one did; and
a fresh model built from a config."""
from __future__ import annotations

import dataclasses

import torch

from avgen.data import make_dataset
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


def config_of_model(cfg: TrainConfig, model: AVDiT) -> TrainConfig:
    """`cfg` with the size, codec and clip spec of a pretrained model (they are not ours to change)."""
    mc = model.config
    size = ModelConfig(**{f.name: mc[f.name] for f in dataclasses.fields(ModelConfig)})
    return dataclasses.replace(cfg, model=size, codec=CodecConfig.from_dict(mc["codec"]),
                               spec=spec_from_dict(mc["clip_spec"]))


def check_vocab(model: AVDiT, ds) -> None:
    unknown = sorted(set(ds.vocab) - set(model.config.vocab))
    if unknown:
        raise ValueError(f"the dataset's labels {unknown} are not in the pretrained model's vocabulary "
                         f"{list(model.config.vocab)}")
    if ds.max_events > model.config.max_events:
        raise ValueError(f"the dataset has prompts of {ds.max_events} labels; the model takes at most "
                         f"{model.config.max_events}")


def build_model(cfg: TrainConfig, ds) -> AVDiT:
    """A fresh model; its initialisation depends on `cfg.seed` only (global RNG state is untouched)."""
    prior = layout_prior(ds, cfg) if cfg.model.timeline_cond else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return AVDiT.from_preset(cfg.model, cfg.spec, ds.vocab, ds.max_events, codec=cfg.codec,
                                 layout_prior=prior)



def layout_prior(ds, cfg: TrainConfig, num_clips: int = 2000) -> dict:
    """Event lengths of the first training clips (stored with the weights: text-to-AV draws timelines)."""
    if getattr(ds, "augment_speed", 0) or getattr(ds, "augment_shift_px", 0):  # the lengths as recorded
        ds = make_dataset(cfg.dataset, split=ds.split, seed=ds.seed, spec=ds.spec, data_root=ds.root)
    clips = [ds[i] for i in range(min(num_clips, len(ds)))]
    if not any(c.events for c in clips):
        raise ValueError(f"timeline_cond needs ground-truth events; dataset {cfg.dataset} has none")
    return LayoutPrior.measure(clips, cfg.codec.frames_per_token, getattr(ds, "min_gap_frames", 1)).to_dict()


__all__ = ["GROWABLE", "build_model", "check_vocab", "config_of_model", "grow", "layout_prior"]
