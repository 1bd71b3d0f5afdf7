"""The training loop: data, one optimisation step, EMA, checkpoints, logging, samples, DDP.

Determinism (EDM2's rule): a run's result is a function of its config alone.
- Data: step s of a run with global batch B trains on global sample indices
  [position, position + B), where position = s * B unless the batch size changed on resume;
  sample g is clip `order(g)` of the dataset, a pure function of (data seed, g).
- Randomness: sample g's noise, noise levels and dropouts come from its own generator seeded
  by (run seed, g), never from global RNG state. So neither the number of processes nor an
  interruption changes what any sample sees.
- Multi-process (torchrun): rank r of W takes the r-th contiguous B/W slice of each global batch;
  DDP averages the per-rank mean gradients, which equals the global batch mean because the slices
  are equal. `2 processes x B/2` therefore matches `1 process x B` up to float summation order.
- Data workers (`workers > 0`, `avgen train --workers N`): batches are built, and the loss's random
  draws made (all but the noise under `noise_on_device`), in N worker processes ahead of the step
  that uses them. A batch is a pure function of its position, so the run trains on exactly what it
  trains on without them. Frames travel as uint8 when they are exactly k/255 (a quarter of their
  bytes; unpacked by table lookup on the device, so the step sees the same floats).
- `noise_on_device` (off by default): the loss's noise, two thirds of a batch's bytes, is drawn on the
  training device instead, per global batch from a generator keyed by (run seed, batch position).
  Every rank draws the whole global batch and keeps its slice, so the rules above still hold
  (resume, data workers, processes up to float summation order) on one kind of device; the run no
  longer matches the same run with the noise drawn per sample, on another device, or with another
  batch size.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from avgen.data import make_dataset
from avgen.data.events import EventDataset
from avgen.model.codec import AVCodec
from avgen.model.config import CodecConfig, ModelConfig, spec_from_dict
from avgen.model.device import autocast, resolve_device
from avgen.model.objective import Draws, ObjectiveConfig, draw_randomness, encode_prompts, training_loss
from avgen.model.transformer import AVDiT, MEDIA
from avgen.train.checkpoint import (latest_checkpoint, list_checkpoints, load_training_state,
                                    save_training_state)
from avgen.train.config import TrainConfig, lr_factor

CONFIG_FILE = "config.json"  # the resolved TrainConfig of the run
RUN_FILE = "run.json"  # how it was launched (device, processes, paths, versions): not part of the result
METRICS_FILE = "metrics.jsonl"


# ============================================================================ processes and device
@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_runtime(device: str = "auto") -> Runtime:
    """Single process, or one rank of a torchrun launch (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Runtime(dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, dist.get_rank(), dist.get_world_size())


def close_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(values: torch.Tensor, rt: Runtime) -> torch.Tensor:
    if rt.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= rt.world_size
    return values


# ============================================================================ data
class SampleOrder:
    """Global sample index g -> dataset index.

    Event datasets draw every index independently (a pure function of seed and index), so g maps
    to itself (modulo their length). A folder dataset holds a few long files cut into consecutive
    windows, so it is visited in a fresh seeded permutation each epoch: otherwise a batch would be
    neighbouring windows of one file.
    """

    def __init__(self, length: int, seed: int, shuffle: bool):
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self._epoch, self._perm = -1, None

    def __call__(self, g: int) -> int:
        if not self.shuffle:
            return g % self.length
        epoch = g // self.length
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.length)
        return int(self._perm[g % self.length])


def seed64(*keys: int) -> int:
    """A 64-bit seed from integer keys; SeedSequence decorrelates neighbouring keys."""
    hi, lo = np.random.SeedSequence(list(keys)).generate_state(2, np.uint32)
    return (int(hi) << 32) | int(lo)


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of global sample `index`."""
    return torch.Generator().manual_seed(seed64(seed, index))


FRAME_LEVELS = torch.from_numpy(np.arange(256, dtype=np.float32) / np.float32(255))  # uint8 k -> k / 255


def pack_frames(frames: np.ndarray) -> torch.Tensor:
    """Frames as uint8 when every value is exactly k / 255 (rendered digits, decoded video), else
    as they are: a quarter of the bytes between a data worker and the device, and no change (-0.0
    aside, which comes back as 0.0). About 0.05 ms per clip on one core."""
    if frames.dtype == np.float32:
        packed = (frames * np.float32(255) + np.float32(0.5)).astype(np.uint8)  # out-of-range values wrap ..
        if np.array_equal(packed.astype(np.float32) / np.float32(255), frames):  # .. and fail this test
            return torch.from_numpy(packed)
    return torch.from_numpy(frames)


def unpack_frames(frames: torch.Tensor) -> torch.Tensor:
    """The float frames `pack_frames` was given, on frames' device (a table lookup: exact anywhere)."""
    if frames.dtype != torch.uint8:
        return frames
    table = FRAME_LEVELS.to(frames.device)
    return table.index_select(0, frames.reshape(-1).int()).view(frames.shape)


@dataclass
class Batch:
    frames: torch.Tensor  # (b, T, H, W, C): float in [0, 1], or uint8 (pack_frames); unpack_frames reads both
    audio: torch.Tensor  # (b, S)
    labels: list[list[str]]  # prompt labels per sample
    generators: list[torch.Generator]  # one per sample, keyed by its global index
    slots: torch.Tensor | None = None  # (b, N) timeline slot ids on the token clock, -1 = not known
    draws: Draws | None = None  # the loss's draws, made from `generators` ahead of the step (or None)
    indices: range | None = None  # the global sample indices of these clips (keys the device noise)

    def pin_memory(self) -> "Batch":  # DataLoader(pin_memory=True) calls this on custom batch types
        pin = lambda x: None if x is None else x.pin_memory()  # noqa: E731
        return dataclasses.replace(self, frames=self.frames.pin_memory(), audio=self.audio.pin_memory(),
                                   slots=pin(self.slots), draws=pin(self.draws))

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"  # from pinned memory the copies overlap the previous step's kernels
        move = lambda x: None if x is None else x.to(device, non_blocking=nb)  # noqa: E731
        return dataclasses.replace(self, frames=move(self.frames), audio=move(self.audio), slots=move(self.slots),
                                   draws=move(self.draws))


@dataclass(frozen=True)
class DrawSpec:
    """What a data worker needs to make a batch's loss draws: the objective and the token shapes."""

    objective: ObjectiveConfig
    frames_per_token: int
    dims: dict[str, int]  # token width per modality (the codec's)
    timeline: bool  # the model has the timeline input (one more dropout draw per sample)
    noise: bool = True  # False: the noise is left to the training device (TrainConfig.noise_on_device)

    def token_shapes(self, num_frames: int) -> dict[str, tuple[int, int]]:
        return {m: (num_frames // self.frames_per_token, self.dims[m]) for m in MEDIA}

    def draws(self, generators: list[torch.Generator], num_frames: int) -> Draws:
        return draw_randomness(generators, len(generators), self.token_shapes(num_frames), self.objective,
                               timeline=self.timeline, noise=self.noise)


def device_noise(seed: int, indices: range, rt: "Runtime", shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """{m: (b, N, D_m)} noise of this rank's slice `indices` of a global batch, drawn on the runtime's
    device. Every rank draws the whole global batch from one generator keyed by its start and keeps its
    slice, so the noise of a sample does not depend on the number of processes."""
    local = len(indices)
    start, world = indices.start - rt.rank * local, local * rt.world_size
    g = torch.Generator(rt.device).manual_seed(seed64(seed, start, 0x6E6F697365))  # its own stream: "noise"
    mine = slice(rt.rank * local, (rt.rank + 1) * local)
    return {m: torch.randn((world, *shapes[m]), generator=g, device=rt.device)[mine] for m in MEDIA}


def local_indices(position: int, batch_size: int, rt: Runtime) -> range:
    """This rank's contiguous slice of the global batch [position, position + batch_size)."""
    local = batch_size // rt.world_size
    start = position + rt.rank * local
    return range(start, start + local)


def load_batch(ds, order: SampleOrder, indices: range, seed: int, device: torch.device,
               frames_per_token: int, draw_spec: DrawSpec | None = None) -> Batch:
    """The clips at global positions `indices` with each sample's generator, or, with `draw_spec`,
    with the loss's draws already made from those generators (and no generators left to draw from)."""
    clips = [ds[order(g)] for g in indices]
    frames = pack_frames(np.stack([c.frames for c in clips]))  # (b, T, H, W, C)
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))  # (b, S)
    generators, draws = [sample_generator(seed, g) for g in indices], None
    if draw_spec is not None:
        generators, draws = [], draw_spec.draws(generators, frames.shape[1])
    batch = Batch(frames, audio, [ds.parse_prompt(c.prompt) for c in clips], generators,
                  clip_slots(clips, frames_per_token), draws, indices)
    return batch.to(device)


class BatchSource(torch.utils.data.Dataset):
    """Batch k of a run from position `start`: what `load_batch` returns for that slice, drawn
    complete (clips and loss draws) in a DataLoader worker."""

    def __init__(self, ds, order: SampleOrder, start: int, batch_size: int, rt: "Runtime", seed: int,
                 draw_spec: DrawSpec):
        self.ds, self.order, self.start, self.batch_size = ds, order, start, batch_size
        self.rank_rt, self.seed, self.draw_spec = Runtime(torch.device("cpu"), rt.rank, rt.world_size), seed, draw_spec

    def __len__(self) -> int:
        return 2 ** 62  # endless: the loop stops asking

    def __getitem__(self, k: int) -> Batch:
        indices = local_indices(self.start + k * self.batch_size, self.batch_size, self.rank_rt)
        return load_batch(self.ds, self.order, indices, self.seed, torch.device("cpu"), self.draw_spec.frames_per_token,
                          self.draw_spec)


def batches(ds, order: SampleOrder, start: int, cfg: TrainConfig, rt: "Runtime", draw_spec: DrawSpec,
            workers: int):
    """Endless batches of a run from data position `start`, on the runtime's device. With workers = 0
    they are built in this process one at a time; else `workers` processes build them ahead (a few
    batches each) in order, so the result is the same."""
    source = BatchSource(ds, order, start, cfg.batch_size, rt, cfg.seed, draw_spec)
    if workers == 0:
        k = 0
        while True:
            yield source[k].to(rt.device)
            k += 1
    loader = torch.utils.data.DataLoader(source, batch_size=None, shuffle=False, num_workers=workers,
                                         pin_memory=rt.device.type == "cuda", prefetch_factor=2,
                                         persistent_workers=False)
    for batch in loader:
        yield batch.to(rt.device)


def clip_slots(clips, frames_per_token: int) -> torch.Tensor:
    """(b, N) timeline slots from each clip's ground-truth events; -1 everywhere for a clip without them."""
    from avgen.model.timeline import slots_from_events

    rows = []
    for c in clips:
        n = c.num_frames // frames_per_token
        rows.append(slots_from_events(c.truth(), n, frames_per_token / c.fps) if c.events
                    else np.full(n, -1, dtype=np.int64))
    return torch.from_numpy(np.stack(rows))


def build_dataset(cfg: TrainConfig, data_root=None, split: str = "train"):
    """The run's clips; augmentation (talking-digits only) applies to the train split alone."""
    augment = {}
    if split == "train" and (cfg.augment_speed or cfg.augment_shift_px):
        if cfg.dataset != "talking-digits":
            raise ValueError(f"augment_speed / augment_shift_px apply to talking-digits, not {cfg.dataset}")
        augment = {"augment_speed": cfg.augment_speed, "augment_shift_px": cfg.augment_shift_px}
    return make_dataset(cfg.dataset, split=split, seed=cfg.data_seed, spec=cfg.spec, data_root=data_root, **augment)


# ============================================================================ model, EMA, optimiser
class EMA:
    """Exponential moving average of a model's floating-point state (what gets exported).

    The decay ramps up as min(decay, (1 + s) / (10 + s)) so early weights, which are noise, are
    forgotten quickly (the warmup diffusers' EMAModel uses).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        state = model.state_dict()
        for k, avg in self.shadow.items():
            if avg.is_floating_point():
                avg.lerp_(state[k].detach(), weight)
            else:  # integer buffers (counters) are copied, not averaged
                avg.copy_(state[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.shadow.keys() - state.keys(), state.keys() - self.shadow.keys()
        if missing or unexpected:
            raise KeyError(f"EMA state mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> torch.nn.Module:
        model.load_state_dict(self.shadow, strict=True)
        return model


def load_weights_folder(path) -> AVDiT:
    """An exported weights folder (or its transformer/ subfolder) -> AVDiT in fp32, offline."""
    folder = Path(path)
    if (folder / "transformer").is_dir():
        folder = folder / "transformer"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--init-from {path}: no exported weights there (made by `avgen export`)")
    return AVDiT.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)


GROWABLE = {"count_cond": ("count_embed.",), "timeline_cond": ("slot_embed.", "slot_label.")}


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


def has_events(ds, num_clips: int = 20) -> bool:
    """Whether the dataset's clips carry ground-truth events (synthetic data does; a folder of clips does not)."""
    return any(ds[i].events for i in range(min(num_clips, len(ds))))


def layout_prior(ds, cfg: TrainConfig, num_clips: int = 2000) -> dict:
    """Event lengths of the first training clips (stored with the weights: text-to-AV draws timelines)."""
    from avgen.model.timeline import LayoutPrior

    if getattr(ds, "augment_speed", 0) or getattr(ds, "augment_shift_px", 0):  # the lengths as recorded
        ds = make_dataset(cfg.dataset, split=ds.split, seed=ds.seed, spec=ds.spec, data_root=ds.root)
    clips = [ds[i] for i in range(min(num_clips, len(ds)))]
    if not any(c.events for c in clips):
        raise ValueError(f"timeline_cond needs ground-truth events; dataset {cfg.dataset} has none")
    return LayoutPrior.measure(clips, cfg.codec.frames_per_token, getattr(ds, "min_gap_frames", 1)).to_dict()


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases, norms, gates and scalars keep their scale)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def build_scheduler(optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


def follow_config_lr(optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> None:
    """After a resume, train at the config's peak LR (`--resume --set lr=...`): the scheduler's saved
    state carries the peak LR the run started with, which would otherwise win. Unchanged: a no-op."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


# ============================================================================ one step
@dataclass
class StepResult:
    loss: float  # mean over the global batch
    stats: dict[str, float]  # per-modality losses, averaged over ranks
    grad_norm: float
    lr: float
    skipped: bool  # non-finite loss or gradient: no update was made


@dataclass
class Trainer:
    """The pieces one step touches. `net` is `model`, or its DDP wrapper under torchrun, or either
    through torch.compile (`train(compiled=True)`)."""

    cfg: TrainConfig
    rt: Runtime
    model: AVDiT
    net: torch.nn.Module
    codec: AVCodec
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    @classmethod
    def create(cls, cfg: TrainConfig, model: AVDiT, rt: Runtime) -> "Trainer":
        """EMA, optimiser, LR schedule and codec around `model`, moved to the runtime's device."""
        model = model.to(rt.device)
        optimizer = build_optimizer(model, cfg)
        net = model
        if rt.distributed:  # every rank built the same model from the same seed; DDP checks the shapes
            # static_graph: the same parameters are used every step, and the last block's prompt-token FFN
            # never is (its output would feed nothing; the weights are kept so that old folders load)
            net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                          static_graph=True)
        return cls(cfg, rt, model, net, AVCodec(cfg.spec, cfg.codec).to(rt.device), EMA(model, cfg.ema_decay),
                   optimizer, build_scheduler(optimizer, cfg))

    def draw_spec(self) -> DrawSpec:
        return DrawSpec(self.cfg.objective, self.cfg.codec.frames_per_token, self.codec.dims,
                        bool(self.model.config.get("timeline_cond")), noise=not self.cfg.noise_on_device)

    def save(self, run_dir: Path, progress: "Progress") -> Path:
        return save_training_state(run_dir, model=self.model, ema=self.ema, optimizer=self.optimizer,
                                   scheduler=self.scheduler, progress=dataclasses.asdict(progress),
                                   config=self.cfg.to_dict(), keep_last=self.cfg.keep_last)

    def load(self, path: Path) -> dict:
        meta = load_training_state(path, model=self.model, ema=self.ema, optimizer=self.optimizer,
                                   scheduler=self.scheduler)
        follow_config_lr(self.optimizer, self.scheduler, self.cfg.lr)
        return meta

    def step(self, batch: Batch, step: int) -> StepResult:
        cfg, model = self.cfg, self.model
        self.optimizer.zero_grad(set_to_none=True)
        ids, mask = encode_prompts(batch.labels, model.config.vocab, model.config.max_events, self.rt.device)
        frames, draws = unpack_frames(batch.frames), batch.draws
        if draws is not None and draws.noise is None:  # noise_on_device: drawn here, on the device
            shapes = self.draw_spec().token_shapes(frames.shape[1])
            draws = dataclasses.replace(draws, noise=device_noise(cfg.seed, batch.indices, self.rt, shapes))
        with autocast(self.rt.device) if cfg.bf16 else contextlib.nullcontext():
            loss, stats = training_loss(self.net, self.codec, frames, batch.audio, ids, mask,
                                        batch.generators, cfg.objective,
                                        slots=batch.slots if model.config.get("timeline_cond") else None,
                                        draws=draws)
        loss.backward()  # under DDP this also averages the gradients over ranks
        keys = sorted(k for k in stats if k != "loss")
        reduced = mean_over_ranks(torch.tensor([loss.item()] + [stats[k] for k in keys],
                                               dtype=torch.float64, device=self.rt.device), self.rt).tolist()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        # every rank sees the same reduced loss and gradient, so all skip (or step) together
        skipped = not (math.isfinite(reduced[0]) and math.isfinite(grad_norm))
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.ema.update(model, step)
        self.scheduler.step()  # the LR follows the step count, updated or not
        return StepResult(reduced[0], dict(zip(keys, reduced[1:])), grad_norm, lr, skipped)


# ============================================================================ run folder
def read_run_config(run_dir) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no {CONFIG_FILE}); start one with `avgen train`")
    d = json.loads(path.read_text())
    for key in ("count_cond", "timeline_cond"):  # inputs added after the run began are off in it, as in weights
        d.get("model", {}).setdefault(key, False)
    return TrainConfig.from_dict(d)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line, each with the step it describes.

    On resume, lines a killed run wrote after its last checkpoint are dropped: those steps are
    about to be trained again and would otherwise appear twice.
    """

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines() if self._step_of(line) <= resume_step]
            _atomic_write_text(path, "".join(line + "\n" for line in kept))

    @staticmethod
    def _step_of(line: str) -> float:
        """The step a line describes; a line torn by a kill mid-write counts as after any step."""
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return math.inf

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class Window:
    """Running means of the logged quantities between two log lines."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count, self.skipped, self.started, self.waited = 0, 0, time.perf_counter(), 0.0

    def add(self, r: StepResult, waited: float = 0.0) -> None:
        self.waited += waited
        if r.skipped:
            self.skipped += 1
            return
        self.count += 1
        for k, v in {"loss": r.loss, "grad_norm": r.grad_norm, **r.stats}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def summary(self, clips: int) -> dict:
        out = {k: v / max(1, self.count) for k, v in self.sums.items()}
        elapsed = max(1e-9, time.perf_counter() - self.started)
        out["clips_per_s"] = clips / elapsed
        # the share of the time spent waiting for the next batch: with workers, near 0 unless the step
        # outruns them (input-bound); without, the cost of building batches in the training process
        out["input_wait_frac"] = round(min(1.0, self.waited / elapsed), 4)
        return out


# ============================================================================ samples during training
def sample_prompts(ds, n: int) -> list[str]:
    """Prompts of the first n training clips: fixed across a run, so sample sheets are comparable."""
    return [ds[i].prompt for i in range(n)]


def write_samples(trainer: Trainer, prompts: list[str], step: int, run_dir: Path, log, judges=None) -> dict:
    """Sample clips from the EMA weights -> mp4 (+ PNG sheet, + quick sync figure when available)."""
    from avgen.data.clip import Clip
    from avgen.model.pipeline import AVGenPipeline

    cfg = trainer.cfg
    net = trainer.ema.copy_to(copy.deepcopy(trainer.model)).eval()
    pipe = AVGenPipeline.from_transformer(net)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(cfg.seed + i) for i in range(len(prompts))]
    out = pipe(prompts, num_inference_steps=cfg.sample_steps, generator=generators)
    folder = run_dir / "samples" / f"step-{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    clips = [Clip(out.frames[i], out.audio[i], out.fps, out.sample_rate, prompt=p) for i, p in enumerate(prompts)]
    for i, clip in enumerate(clips):
        stem = folder / f"{i:02d}_{clip.prompt.replace(' ', '-') or 'null'}"
        _optional(log, "avgen.data.io", lambda io: io.write_mp4(clip, stem.with_suffix(".mp4")))
        _optional(log, "avgen.data.preview", lambda pv: pv.render_sheet(clip, stem.with_suffix(".png")))
    figures = _optional(log, "avgen.eval.suite", lambda _: quick_eval_figures(clips, judges)) or {}
    return {"samples": str(folder.relative_to(run_dir)), **figures}


def validation_batch(trainer: Trainer, data_root, log) -> dict | None:
    """The test-split clips that `val_every` measures on (the first `val_clips` of the run's data seed),
    as network inputs; None (with a note) for a dataset without a test split of events."""
    from avgen.cli import one_line
    from avgen.eval.denoise import clip_batch

    cfg, model = trainer.cfg, trainer.model
    try:
        ds = build_dataset(cfg, data_root, split="test")
        clips = [ds[i] for i in range(min(cfg.val_clips, len(ds)))]
        if model.config.get("timeline_cond") and not any(c.events for c in clips):
            raise ValueError(f"the {cfg.dataset} test clips carry no events for the timeline input")
        return clip_batch(clips, model.config.vocab, model.config.max_events, cfg.codec.frames_per_token,
                          ds.parse_prompt)
    except (ValueError, OSError) as e:
        log(f"val_every: no validation ({one_line(str(e) or type(e).__name__)})")
        return None


def validate(trainer: Trainer, batch: dict, log) -> dict:
    """The EMA weights' denoising error on the validation clips ({"val_x0_audio@0.3": ..., ...}), computed
    as the training step computes (bf16 autocast on CUDA when the run uses it, so on a GPU the figures
    are bf16's, not those of `avgen eval --denoise-error`, which runs in fp32). Like the sample clips,
    a side output: a failure is logged ({"val_error": ...}) and training goes on."""
    from avgen.cli import one_line
    from avgen.eval.denoise import denoise_error, flat

    try:
        net = trainer.ema.copy_to(copy.deepcopy(trainer.model)).eval()
        with autocast(trainer.rt.device) if trainer.cfg.bf16 else contextlib.nullcontext():
            errors = denoise_error(net, trainer.codec, batch, seed=trainer.cfg.seed)
    except (RuntimeError, ValueError) as e:  # e.g. out of memory
        log(f"validation failed ({one_line(str(e) or type(e).__name__)}); training goes on")
        return {"val_error": one_line(str(e) or type(e).__name__)}
    return flat(errors, "val_x0")


def _samples_or_error(trainer: Trainer, prompts: list[str], step: int, run_dir: Path, log, judges) -> dict:
    """Samples are a side output: a failure there is logged and training goes on (the checkpoint of
    this step is already on disk), rather than ending a long run."""
    try:
        return write_samples(trainer, prompts, step, run_dir, log, judges)
    except Exception as e:  # noqa: BLE001 - any failure of a side output, reported in the log
        log(f"step {step}: writing samples failed: {type(e).__name__}: {e}")
        return {"samples_error": f"{type(e).__name__}: {e}"}


_missing_logged: set[str] = set()


def _optional(log, module: str, use):
    """Call `use(module)` if that optional module (and what `use` imports) exists; otherwise log
    once and skip: the lead's preview and the evaluation suite may not be installed yet."""
    try:
        return use(importlib.import_module(module))
    except ImportError as e:
        if module not in _missing_logged:
            _missing_logged.add(module)
            log(f"samples: {module} is not available ({e}); skipping what needs it")
        return None


def quick_eval_figures(clips, judges=None) -> dict:
    """The evaluation suite's per-clip analysis of sample clips (decoded pixels and samples only, no
    ground truth): video vs audio onsets matched within one frame (F1, mean over clips), the median
    |AV offset|, the share of clips whose event counts in both modalities equal the prompt's label
    count, and with the digit judges, how often each modality shows / says the prompt."""
    from avgen.eval.onsets import AVSignal
    from avgen.eval.suite import POOLED, EvalConfig, analyse, summarise

    cfg = EvalConfig(av_align=False, n_boot=100)  # AV-Align is slow and not a sync figure we act on
    records = [analyse(AVSignal.from_clip(c), cfg, judges, prompt=c.prompt).record for c in clips]
    counts_ok = [len(r["video_onsets_s"]) == len(r["audio_onsets_s"]) == len(r["prompt"].split()) for r in records]
    summary = summarise(records, cfg)
    figures = {"av_onset_f1": summary.get("onset_f1", {}).get("mean", math.nan),
               "abs_av_offset_ms": summary.get("median_abs_offset_ms", {}).get("value", math.nan),
               "event_count_ok": float(np.mean(counts_ok))}
    figures.update({name: summary[name]["value"] for name in POOLED if name in summary})
    return {k: _json_float(v) for k, v in figures.items()}


def load_judges(ds, log):
    """The digit judges of the evaluation suite when the dataset speaks digits and they are trained."""
    if not set(ds.vocab) <= set("0123456789"):
        return None
    try:
        from avgen.eval.judges import Judges
        return Judges.load()
    except (ImportError, FileNotFoundError) as e:
        log(f"samples: no digit judges ({e}); sample figures without digit accuracy")
        return None


# ============================================================================ the loop
@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0  # optimizer steps taken (skipped ones included)
    data_position: int = 0  # global index of the next sample to train on
    skipped_steps: int = 0  # steps whose loss or gradient was not finite

    def advance(self, batch_size: int, skipped: bool) -> "Progress":
        return Progress(self.step + 1, self.data_position + batch_size, self.skipped_steps + skipped)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    skipped_steps: int
    last_loss: float
    rank: int = 0  # under torchrun every rank returns; only rank 0 wrote the files


def setup_training(cfg: TrainConfig, run_dir: Path, resume: bool, init_from, data_root, rt: Runtime,
                   log, grow_depth: int | None = None) -> tuple[TrainConfig, object, Trainer, Progress]:
    """(config, dataset, trainer, progress) for a fresh, fine-tuned or resumed run."""
    if grow_depth is not None and init_from is None:
        raise ValueError("growing a model's depth needs the pretrained model to grow (--init-from)")
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None and init_from is not None:
        log(f"resuming from {checkpoint.name}: --init-from {init_from} is ignored")
    pretrained = load_weights_folder(init_from) if init_from is not None and checkpoint is None else None
    if pretrained is not None:
        wanted = {"count_cond": cfg.model.count_cond, "timeline_cond": cfg.model.timeline_cond}
        prior = None
        if cfg.model.timeline_cond and not pretrained.config.get("timeline_cond", False):
            theirs = config_of_model(cfg, pretrained)  # the pretrained model's clip spec and codec
            data = build_dataset(theirs, data_root)
            if has_events(data):
                prior = layout_prior(data, theirs)
            else:
                log(f"dataset {cfg.dataset} has no ground-truth events: the model gets no timeline input")
                wanted["timeline_cond"] = False
        pretrained = grow(pretrained, wanted, log, prior, depth=grow_depth, seed=cfg.seed)
        cfg, asked = config_of_model(cfg, pretrained), cfg
        changed = _changed_keys({k: asked.to_dict()[k] for k in ("model", "codec", "spec")},
                                {k: cfg.to_dict()[k] for k in ("model", "codec", "spec")})
        if changed:
            log(f"--init-from {init_from}: keeping the pretrained model's {', '.join(changed)}")
    ds = build_dataset(cfg, data_root)
    if pretrained is None and checkpoint is None and cfg.model.timeline_cond and not has_events(ds):
        log(f"dataset {cfg.dataset} has no ground-truth events: training without a timeline input "
            "(model.timeline_cond=false)")
        cfg = cfg.override({"model.timeline_cond": False})
    if pretrained is not None:
        check_vocab(pretrained, ds)
    trainer = Trainer.create(cfg, pretrained or build_model(cfg, ds), rt)
    if checkpoint is None:
        return cfg, ds, trainer, Progress()
    meta = trainer.load(checkpoint)
    # through TrainConfig: a key the saved config lacks takes the default it was trained with
    changed = _changed_keys(TrainConfig.from_dict(meta["train_config"]).to_dict(), cfg.to_dict())
    log(f"resumed from {checkpoint} at step {meta['progress']['step']}"
        + (f" (config changed: {', '.join(changed)})" if changed else ""))
    return cfg, ds, trainer, Progress(**meta["progress"])


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def check_run_dir(run_dir: Path, resume: bool) -> None:
    exists = (run_dir / CONFIG_FILE).exists() or bool(list_checkpoints(run_dir))
    if resume and not run_dir.is_dir():
        raise FileNotFoundError(f"--resume: run folder {run_dir} does not exist")
    if not resume and exists:
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")


def _write_run_files(run_dir: Path, cfg: TrainConfig, rt: Runtime, extra: dict) -> None:
    from avgen.model.pipeline import package_versions

    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json() + "\n")
    info = {"device": str(rt.device), "world_size": rt.world_size, "versions": package_versions(), **extra}
    _atomic_write_text(run_dir / RUN_FILE, json.dumps(info, indent=2, default=str) + "\n")


class Recorder:
    """What follows each step on rank 0: progress bar, metrics.jsonl, checkpoints, sample clips,
    held-out validation."""

    def __init__(self, trainer: Trainer, ds, run_dir: Path, start: Progress, resume: bool, show_bar: bool, log,
                 data_root=None):
        self.trainer, self.cfg, self.run_dir, self.log = trainer, trainer.cfg, run_dir, log
        self.main = trainer.rt.is_main
        self.metrics = MetricsLog(run_dir / METRICS_FILE, start.step if resume else None, self.main)
        sampling = bool(self.cfg.sample_every and self.main)
        self.prompts = sample_prompts(ds, self.cfg.num_samples) if sampling else []
        self.judges = load_judges(ds, log) if sampling else None
        self.val_batch = validation_batch(trainer, data_root, log) if self.cfg.val_every and self.main else None
        self.window, self.saved, self.last = Window(), None, None
        self.bar = tqdm(total=self.cfg.steps, initial=start.step, disable=not show_bar, unit="step",
                        dynamic_ncols=True)

    def after_step(self, result: StepResult, progress: Progress, waited: float = 0.0) -> None:
        """`waited`: seconds the step waited for its batch."""
        cfg, step = self.cfg, progress.step
        self.window.add(result, waited)
        self.last = result
        self.bar.update()
        if result.skipped:
            self.log(f"step {step}: non-finite loss {result.loss} / grad norm {result.grad_norm}; update "
                     f"skipped ({progress.skipped_steps} so far)")
            self.metrics.write({"step": step, "skipped": True, "loss": _json_float(result.loss),
                                "grad_norm": _json_float(result.grad_norm)})
        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
            self.log_window(result, progress)
        if self.main and (step % cfg.ckpt_every == 0 or last):
            self.saved = self.trainer.save(self.run_dir, progress)
        if self.val_batch is not None and step % cfg.val_every == 0:
            self.metrics.write({"step": step, **validate(self.trainer, self.val_batch, self.log)})
        if self.main and cfg.sample_every and step % cfg.sample_every == 0:
            self.metrics.write({"step": step, **_samples_or_error(self.trainer, self.prompts, step, self.run_dir,
                                                                  self.log, self.judges)})

    def log_window(self, result: StepResult, progress: Progress) -> None:
        summary = self.window.summary(self.cfg.batch_size * (self.window.count + self.window.skipped))
        self.bar.set_postfix(loss=f"{summary.get('loss', math.nan):.4f}", clips_s=f"{summary['clips_per_s']:.1f}")
        self.metrics.write({"step": progress.step, "lr": result.lr, "skipped_steps": progress.skipped_steps,
                            "samples_seen": progress.data_position, **summary})
        self.window.reset()

    def stop(self, progress: Progress) -> None:
        """Stopping early: the step just taken is logged and checkpointed (if it was not already)."""
        if progress.step % self.cfg.log_every:
            self.log_window(self.last, progress)
        if self.main and progress.step % self.cfg.ckpt_every:
            self.saved = self.trainer.save(self.run_dir, progress)

    def close(self) -> None:
        self.bar.close()


def train(cfg: TrainConfig, run_dir, *, resume: bool = False, init_from=None, device: str = "auto",
          data_root=None, progress_bar: bool = True, log=None, workers: int = 0,
          max_seconds: float | None = None, grow_depth: int | None = None, compiled: bool = False) -> TrainResult:
    """Train (or continue) the run in `run_dir` until `cfg.steps`; the library entry point of `avgen train`.

    resume: continue from the newest checkpoint (or from scratch if the run never saved one).
    init_from: an exported weights folder to fine-tune (its size, codec and clip spec win over cfg's).
    grow_depth: with init_from, append blocks to the pretrained model up to this depth; each new block
    starts as the identity (see `grow`).
    workers: data worker processes building batches ahead (0 = in this process; same result).
    max_seconds: stop after the first step that ends this long after training began, with a
    checkpoint (resume goes on from there exactly); None = run to `cfg.steps`.
    compiled: the training forward and backward through `torch.compile` (fused kernels, fewer launches:
    a small model on a GPU is launch-bound). Float results differ from eager in the last bits, so a
    compiled run replays compiled runs, not eager ones; checkpoints have the same format and names
    either way (the model, its EMA and checkpoints stay plain). Not tried under torchrun.
    """
    if workers < 0 or (max_seconds is not None and not max_seconds > 0):
        raise ValueError(f"workers must be >= 0 and max_seconds positive, got {workers} and {max_seconds}")
    run_dir = Path(run_dir)
    cfg.check()
    check_run_dir(run_dir, resume)
    rt = init_runtime(device)
    try:
        if cfg.batch_size % rt.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} does not split over {rt.world_size} processes")
        log = (log or _to_stderr) if rt.is_main else _silent
        return _train(cfg, run_dir, resume, init_from, data_root, rt, progress_bar and rt.is_main, log, workers,
                      max_seconds, grow_depth, compiled)
    finally:
        close_runtime(rt)


def _train(cfg, run_dir: Path, resume, init_from, data_root, rt: Runtime, show_bar: bool, log, workers: int = 0,
           max_seconds: float | None = None, grow_depth: int | None = None, compiled: bool = False) -> TrainResult:
    cfg, ds, trainer, progress = setup_training(cfg, run_dir, resume, init_from, data_root, rt, log, grow_depth)
    if compiled:  # the module the step calls; the model, its EMA and the checkpoints stay plain
        trainer.net = torch.compile(trainer.net)
    if rt.is_main:
        _write_run_files(run_dir, cfg, rt, {"init_from": init_from, "grow_depth": grow_depth, "data_root": data_root,
                                            "workers": workers, "max_seconds": max_seconds, "compiled": compiled})
    recorder = Recorder(trainer, ds, run_dir, progress, resume, show_bar, log, data_root)
    order = SampleOrder(len(ds), cfg.data_seed, shuffle=not isinstance(ds, EventDataset))
    result, began = None, _now()
    stream = batches(ds, order, progress.data_position, cfg, rt, trainer.draw_spec(), workers)
    try:
        while progress.step < cfg.steps:
            asked = time.perf_counter()
            batch = next(stream)
            waited = time.perf_counter() - asked
            result = trainer.step(batch, progress.step)
            progress = progress.advance(cfg.batch_size, result.skipped)
            recorder.after_step(result, progress, waited)
            if max_seconds is not None and progress.step < cfg.steps and out_of_time(_now() - began >= max_seconds, rt):
                log(f"step {progress.step}: --max-minutes reached after {_now() - began:.0f} s; "
                    f"resume with --resume to go on to step {cfg.steps}")
                recorder.stop(progress)
                break
    finally:
        stream.close()  # ends the data workers
    recorder.close()
    if rt.distributed:
        dist.barrier()  # rank 0's last checkpoint is on disk before anyone returns
    return TrainResult(run_dir, progress.step, recorder.saved or latest_checkpoint(run_dir), progress.skipped_steps,
                       result.loss if result else math.nan, rt.rank)


def _now() -> float:
    """The time box's clock (its own name, so that a test can step it)."""
    return time.monotonic()


def out_of_time(mine: bool, rt: Runtime) -> bool:
    """Whether any rank is out of time (all ranks stop at the same step)."""
    if not rt.distributed:
        return mine
    flag = torch.tensor([float(mine)], device=rt.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _silent(msg: str) -> None:
    pass


def _to_stderr(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def _json_float(x: float):
    return x if math.isfinite(x) else str(x)


__all__ = ["EMA", "Batch", "Progress", "Runtime", "SampleOrder", "StepResult", "TrainResult", "Trainer",
           "BatchSource", "DrawSpec", "batches", "build_model", "build_optimizer", "build_scheduler",
           "follow_config_lr", "init_runtime", "load_batch",
           "local_indices", "quick_eval_figures", "read_run_config", "sample_generator", "setup_training", "train"]
