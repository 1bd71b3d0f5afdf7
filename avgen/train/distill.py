"""`avgen distill`: a one- or two-pass student of shipped weights, with guidance folded in.

Two phases in one run folder, each resumable:
  1. `pairs/`: the teacher's guided 25-step Euler trajectories for prompts of the training data (its
     noise, where it stood at the captured levels, its clip, the prompt and the timeline), written in
     shards of `shard` clips; a killed run keeps the shards it finished.
  2. `checkpoints/`: a LoRA adapter (`avgen.model.student`) trained to follow those trajectories in
     `len(levels)` Euler steps: from level a the pass must land, by one Euler step, where the teacher
     stood at the next level b (its target x0 is the point of the straight line through both that lies
     at level 0); the last pass must land on the teacher's clip. The loss is the squared distance of the
     landing point (each pass's x0 error scaled by how far its step goes, 1 - b/a). Checkpoints are atomic
     and hold the adapter, the optimiser and the step; batches are a function of the step, so a resumed
     run continues bit for bit.
At the end `student/` holds the adapter and its config; `into=` (the CLI's `--install`) installs it in the
teacher's weights folder. The run records its teacher's checksum: a run is continued only on the same
weights, and `steps` (with the cosine that follows it), `ckpt_every`, `log_every` and `keep_last` are
the only settings a continued run may change.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from avgen.data import make_dataset
from avgen.model.conditioning import encode
from avgen.model.config import DEFAULT_GUIDANCE_INTERVAL, DEFAULT_GUIDANCE_SCALE
from avgen.model.pipeline import AVGenPipeline, load_pipeline
from avgen.model.student import (STUDENT_FOLDER, StudentConfig, adapter_state, attach_adapter, load_adapter_state,
                                 save_student)
from avgen.model.transformer import MEDIA
from avgen.model.weights import weights_file
from avgen.train.checkpoint import (FORMAT_VERSION, atomic_save, checkpoint_path, latest_checkpoint,
                                    optimizer_from_tensors, optimizer_to_tensors, prune, read_checkpoint)
from avgen.util import atomic_write_text, sha256_file

CONFIG_FILE = "distill_config.json"
TEACHER_FILE = "teacher.json"
RESUMABLE = {"steps", "ckpt_every", "log_every", "keep_last"}  # what a continued run may change


@dataclass(frozen=True)
class DistillConfig:
    """Everything that decides a student (saved in the run folder; a resumed run must match it)."""

    clips: int = 3072  # teacher trajectories
    shard: int = 64
    teacher_steps: int = 25
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    guidance_interval: tuple[float, float] = DEFAULT_GUIDANCE_INTERVAL
    capture: tuple[float, ...] = (0.75, 0.5, 0.25)  # levels of the teacher's path kept (nearest step)
    levels: tuple[float, ...] = (1.0, 0.5)  # the student's passes (each but 1 must be captured)
    rank: int = 32
    alpha: float = 32.0
    batch_size: int = 16
    steps: int = 1200
    lr: float = 5e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    dataset: str = "talking-digits"
    griffin_lim_iters: int | None = None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown distill setting(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}).check()

    def override(self, pairs: dict) -> "DistillConfig":
        d = self.to_dict()
        for k, v in pairs.items():
            if k not in d:
                raise ValueError(f"unknown distill setting {k!r}; choose from {', '.join(d)}")
            d[k] = v
        return DistillConfig.from_dict(d)

    def check(self) -> "DistillConfig":
        for f in fields(self):  # values from the command line arrive as JSON: each must have its field's type
            v, default = getattr(self, f.name), getattr(DistillConfig, f.name, None)
            kind = type(default) if default is not None else int  # the one optional field is a count
            ok = (v is None and default is None) or (
                all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) if kind is tuple else
                isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
                isinstance(v, int) and not isinstance(v, bool) if kind is int else isinstance(v, kind))
            if not ok:
                raise ValueError(f"distill setting {f.name} must be {kind.__name__ if kind is not tuple else 'a list of numbers'}"
                                 f", got {v!r}")
        StudentConfig(levels=self.levels, rank=self.rank).check()
        missing = [lv for lv in self.levels[1:] if not any(abs(lv - c) < 1e-9 for c in self.capture)]
        if missing:
            raise ValueError(f"student levels {missing} are not among the captured levels {list(self.capture)}")
        if min(self.clips, self.shard, self.batch_size, self.steps, self.ckpt_every, self.log_every) < 1:
            raise ValueError("clips, shard, batch_size, steps, ckpt_every and log_every must be >= 1")
        if self.clips < self.batch_size:
            raise ValueError(f"clips ({self.clips}) must be at least batch_size ({self.batch_size})")
        if self.teacher_steps < 2 or not all(0 < c < 1 for c in self.capture):
            raise ValueError("the teacher needs >= 2 steps, and captured levels must lie between 0 and 1")
        if len(set(capture_indices(self).values())) != len(self.capture):
            raise ValueError(f"captured levels {list(self.capture)} fall on the same teacher step at "
                             f"{self.teacher_steps} steps: give fewer, or more teacher steps")
        return self


# ---------------------------------------------------------------------------- phase 1: the teacher's paths
def teacher_sigmas(steps: int) -> torch.Tensor:
    s = FlowMatchEulerDiscreteScheduler()
    s.set_timesteps(steps)
    return s.sigmas.float()


def capture_indices(cfg: DistillConfig) -> dict[float, int]:
    """Each captured level -> the teacher step after which its path is kept (the nearest level visited)."""
    sig = teacher_sigmas(cfg.teacher_steps)
    return {lv: int(torch.argmin((sig[1:-1] - lv).abs())) for lv in cfg.capture}


def shard_path(run_dir: Path, k: int) -> Path:
    return run_dir / "pairs" / f"shard-{k:05d}.safetensors"


def make_shard(pipe: AVGenPipeline, cfg: DistillConfig, k: int, data_root=None) -> dict[str, torch.Tensor]:
    """Shard k: clips k * shard ... from the teacher, their prompts drawn from the training data's
    prompt stream seeded by (seed, k), their noise by (seed, clip index)."""
    ds = make_dataset(cfg.dataset, split="train", seed=cfg.seed, data_root=data_root)
    rng = np.random.default_rng([cfg.seed, 7, k])
    n = min(cfg.shard, cfg.clips - k * cfg.shard)
    prompts = [" ".join(ds.random_labels(rng)) for _ in range(n)]
    parsed = pipe.parse_prompts(prompts, n)
    gens = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + k * cfg.shard + i) for i in range(n)]
    num_tokens = pipe.codec.num_tokens()
    dims = pipe.codec.dims
    noise = {m: torch.stack([torch.randn(num_tokens, dims[m], generator=g) for g in gens]) for m in MEDIA}
    where = {i: lv for lv, i in capture_indices(cfg).items()}
    kept: dict[float, dict[str, torch.Tensor]] = {}

    def keep(p, i, t, tensors):
        if i in where:
            kept[where[i]] = {"video": tensors["latents"].clone(), "audio": tensors["audio_latents"].clone()}
        return {}

    pipe.set_sampler("euler")
    out = pipe(parsed, generator=gens, latents=noise["video"].clone(), audio_latents=noise["audio"].clone(),
               num_inference_steps=cfg.teacher_steps, guidance_scale=cfg.guidance_scale,
               guidance_interval=cfg.guidance_interval, output_type="latent", callback_on_step_end=keep)
    ids, mask = encode(parsed, pipe.vocabulary, "cpu")
    sig = teacher_sigmas(cfg.teacher_steps)
    slots = torch.zeros(n, num_tokens, dtype=torch.long) if out.timeline is None else torch.as_tensor(out.timeline)
    shard = {"ids": ids, "mask": mask.to(torch.uint8), "slots": slots.long(),  # no timeline input: zeros, unread
             "level.1": torch.tensor(1.0)}
    for m in MEDIA:
        shard[f"{m}.1"] = noise[m].half()
        shard[f"{m}.0"] = (out.frames if m == "video" else out.audio).float().cpu().half()
    for lv, i in capture_indices(cfg).items():
        for m in MEDIA:
            shard[f"{m}.{lv:g}"] = kept[lv][m].float().cpu().half()
        shard[f"level.{lv:g}"] = sig[i + 1].clone()  # the level the path was kept at
    return shard


def teacher_pairs(pipe: AVGenPipeline, cfg: DistillConfig, run_dir: Path, data_root=None, log=print,
                  out_of_time=lambda: False) -> bool:
    """Every shard not yet on disk (shards are written whole, atomically); False if `out_of_time()` said
    stop after a shard with others still to make."""
    shards = math.ceil(cfg.clips / cfg.shard)
    todo = [k for k in range(shards) if not shard_path(run_dir, k).is_file()]
    for k in todo:
        path = shard_path(run_dir, k)
        t0 = time.perf_counter()
        tensors = make_shard(pipe, cfg, k, data_root)
        atomic_save({n: v.contiguous() for n, v in tensors.items()}, {"shard": k}, path)
        log(f"teacher shard {k + 1}/{shards}: {time.perf_counter() - t0:.1f} s")
        if k != todo[-1] and out_of_time():
            return False
    return True


def load_pairs(run_dir: Path, cfg: DistillConfig) -> dict[str, torch.Tensor]:
    shards = [load_file(shard_path(run_dir, k)) for k in range(math.ceil(cfg.clips / cfg.shard))]
    out = {}
    for key in shards[0]:
        if key.startswith("level."):
            out[key] = shards[0][key]
        else:
            out[key] = torch.cat([s[key] for s in shards])
    return out


# ---------------------------------------------------------------------------- phase 2: the student
def captured(level: float, capture: tuple[float, ...]) -> float:
    """The captured level a student level stands for (the nearest)."""
    return min(capture, key=lambda c: abs(c - level))


def trajectory_targets(pairs: dict[str, torch.Tensor], index: torch.Tensor, levels: tuple[float, ...],
                       capture: tuple[float, ...]) -> list[tuple[float, dict, dict, float]]:
    """Per student pass j: (its level a, its input {m: x_a}, its target x0 {m}, the scale 1 - b/a of its
    step), for clips `index`. The input at a < 1 is the teacher's path at the captured level nearest a."""
    def key(lv):
        return "1" if lv == 1.0 else f"{captured(lv, capture):g}"

    out = []
    for j, a_nominal in enumerate(levels):
        a = float(pairs[f"level.{key(a_nominal)}"])
        xa = {m: pairs[f"{m}.{key(a_nominal)}"][index].float() for m in MEDIA}
        if j + 1 < len(levels):
            b = float(pairs[f"level.{key(levels[j + 1])}"])
            xb = {m: pairs[f"{m}.{key(levels[j + 1])}"][index].float() for m in MEDIA}
        else:
            b, xb = 0.0, {m: pairs[f"{m}.0"][index].float() for m in MEDIA}
        r = b / a
        target = {m: (xb[m] - r * xa[m]) / (1 - r) for m in MEDIA}
        out.append((a, xa, target, 1 - r))
    return out


def batch_index(cfg: DistillConfig, n: int, step: int) -> torch.Tensor:
    """The clips of step `step`: epoch-wise permutations seeded by (seed, epoch), so resume is exact."""
    per_epoch = n // cfg.batch_size
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
    return perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]


def lr_at(cfg: DistillConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def student_loss(net, pairs, index, cfg: DistillConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared distance of every pass's landing point from the teacher's, per modality summed."""
    passes = trajectory_targets(pairs, index, cfg.levels, cfg.capture)
    b = len(index)
    x = {m: torch.cat([p[1][m] for p in passes]) for m in MEDIA}
    t = torch.cat([torch.full((b,), p[0]) for p in passes])
    ids = pairs["ids"][index].repeat(len(passes), 1)
    mask = pairs["mask"][index].bool().repeat(len(passes), 1)
    slots = pairs["slots"][index].repeat(len(passes), 1)
    out = net(x["video"], x["audio"], t, t, ids, mask, slots=slots)
    w = torch.cat([torch.full((b,), p[3]) for p in passes])[:, None, None]
    stats, loss = {}, 0.0
    for m in MEDIA:
        target = torch.cat([p[2][m] for p in passes])
        err = ((out[m].float() - target) * w).pow(2).mean()
        stats[f"loss_{m}"] = err.item()
        loss = loss + err
    return loss, stats


@dataclass
class DistillResult:
    run_dir: Path
    step: int
    student: Path | None
    last_loss: float


def distill(teacher_dir, run_dir, cfg: DistillConfig, *, data_root=None, resume: bool = False,
            max_seconds: float | None = None, into=None, log=print) -> DistillResult:
    """Run (or continue) a distillation in `run_dir` (see the module docstring). `into`: a weights folder
    (the teacher's) to install the finished student in as `student/`."""
    run_dir = Path(run_dir)
    cfg.check()
    saved, teacher_file = run_dir / CONFIG_FILE, run_dir / TEACHER_FILE
    sha = sha256_file(weights_file(teacher_dir))
    if saved.is_file():
        if not resume:
            raise FileExistsError(f"{run_dir} holds a distillation already: continue it with --resume, or give "
                                  "another --out")
        old = DistillConfig.from_dict(json.loads(saved.read_text()))
        changed = [k for k in cfg.to_dict() if cfg.to_dict()[k] != old.to_dict()[k]]
        if set(changed) - RESUMABLE:
            raise ValueError(f"{run_dir} was started with other settings ({', '.join(changed)}); "
                             "give the same ones, or another --out")
        if teacher_file.is_file() and json.loads(teacher_file.read_text()).get("sha256") != sha:
            raise ValueError(f"{run_dir} was distilled from other weights than {teacher_dir}: give those, or "
                             "another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(cfg.to_dict(), indent=2) + "\n")
    atomic_write_text(teacher_file, json.dumps({"weights": str(teacher_dir), "sha256": sha}, indent=2) + "\n")
    began = time.monotonic()

    def out_of_time() -> bool:
        return max_seconds is not None and time.monotonic() - began >= max_seconds

    pipe = load_pipeline(teacher_dir, device="cpu", student=False)  # the teacher alone, whatever student it has
    pipe.set_progress_bar_config(disable=True)
    if not teacher_pairs(pipe, cfg, run_dir, data_root, log, out_of_time):
        log("out of time while the teacher's trajectories were made; continue with --resume")
        return DistillResult(run_dir, 0, None, math.nan)
    pairs = load_pairs(run_dir, cfg)
    n = pairs["ids"].shape[0]
    net = attach_adapter(pipe.transformer, cfg.rank, cfg.alpha, cfg.seed).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    step = 0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        tensors, meta = read_checkpoint(ckpt)
        load_adapter_state(net, {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")})
        opt.load_state_dict(optimizer_from_tensors(tensors, meta["optimizer"]))
        step = int(meta["step"])
        log(f"resumed from {ckpt.name} at step {step}")
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.is_file():  # lines a killed run wrote after its last checkpoint are trained again
        kept = [line for line in metrics_file.read_text().splitlines() if _step_of(line) <= step]
        atomic_write_text(metrics_file, "".join(line + "\n" for line in kept))
    metrics = metrics_file.open("a")
    loss = math.nan
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss_t, stats = student_loss(net, pairs, batch_index(cfg, n, step), cfg)
        loss_t.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        loss = loss_t.detach().item()
        if math.isfinite(loss) and math.isfinite(norm):
            opt.step()
        step += 1
        if step % cfg.log_every == 0:
            record = {"step": step, "loss": loss, **stats, "grad_norm": norm, "lr": lr_at(cfg, step - 1),
                      "seconds": round(time.monotonic() - began, 1)}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        stop = out_of_time()
        if step % cfg.ckpt_every == 0 or step == cfg.steps or stop:
            save_state(run_dir, net, opt, step, cfg)
        if stop and step < cfg.steps:
            log(f"step {step}: out of time; continue with --resume")
            metrics.close()
            return DistillResult(run_dir, step, None, loss)
    metrics.close()
    folder = write_student(run_dir, net, cfg, teacher_dir)
    if into is not None:
        install(folder, into)
        log(f"student installed in {Path(into) / STUDENT_FOLDER}")
    return DistillResult(run_dir, step, folder, loss)


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf  # a line torn by a kill


def save_state(run_dir: Path, net, opt, step: int, cfg: DistillConfig) -> Path:
    state, opt_meta = optimizer_to_tensors(opt.state_dict())
    tensors = {**{f"adapter.{k}": v for k, v in adapter_state(net).items()}, **state}
    path = atomic_save(tensors, {"format": FORMAT_VERSION, "step": step, "optimizer": opt_meta,
                                 "config": cfg.to_dict()},
                       checkpoint_path(run_dir, step))
    prune(run_dir, cfg.keep_last)
    return path


def write_student(run_dir: Path, net, cfg: DistillConfig, teacher_dir) -> Path:
    sig, at = teacher_sigmas(cfg.teacher_steps), capture_indices(cfg)
    levels = tuple([1.0] + [float(sig[at[captured(lv, cfg.capture)] + 1]) for lv in cfg.levels[1:]])  # as in the shards
    scfg = StudentConfig(levels=levels, rank=cfg.rank, alpha=cfg.alpha,
                         teacher_sha256=sha256_file(weights_file(teacher_dir)),
                         teacher={"sampler": "euler", "steps": cfg.teacher_steps, "guidance_scale": cfg.guidance_scale,
                                  "guidance_interval": list(cfg.guidance_interval)},
                         griffin_lim_iters=cfg.griffin_lim_iters)
    folder = save_student(run_dir / STUDENT_FOLDER, adapter_state(net), scfg)
    atomic_write_text(folder / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")  # the recipe, with it
    return folder


def install(folder: Path, weights_dir) -> Path:
    """Copy a finished `student/` into a weights folder (replacing the one there)."""
    dest = Path(weights_dir) / STUDENT_FOLDER
    tmp = dest.with_name(f".{STUDENT_FOLDER}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


__all__ = ["DistillConfig", "DistillResult", "batch_index", "capture_indices", "distill", "install", "load_pairs",
           "lr_at", "make_shard", "student_loss", "teacher_pairs", "trajectory_targets"]
