"""What one optimisation step touches: the EMA of the weights, AdamW and its LR schedule, and the
step itself (`Trainer.step`)."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from avgen.model.codec import AVCodec
from avgen.model.device import autocast
from avgen.model.objective import encode_prompts, training_loss
from avgen.model.transformer import AVDiT
from avgen.train.checkpoint import load_training_state, save_training_state
from avgen.train.config import TrainConfig, lr_factor
from avgen.train.data import Batch, DrawSpec, device_noise, unpack_frames
from avgen.train.runtime import Runtime, mean_over_ranks


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



@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0  # optimizer steps taken (skipped ones included)
    data_position: int = 0  # global index of the next sample to train on
    skipped_steps: int = 0  # steps whose loss or gradient was not finite

    def advance(self, batch_size: int, skipped: bool) -> "Progress":
        return Progress(self.step + 1, self.data_position + batch_size, self.skipped_steps + skipped)


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

    def save(self, run_dir: Path, progress: Progress) -> Path:
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



__all__ = ["EMA", "Progress", "StepResult", "Trainer", "build_optimizer", "build_scheduler", "follow_config_lr"]
