"""The distilled student: the shipped network plus a low-rank adapter that makes a clip in one or
two passes, with prompt guidance folded in (no unguided pass).

The student is stored beside its teacher as `<weights>/student/` (config.json + adapter.safetensors):
a LoRA adapter (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; as LCM-LoRA,
Luo et al. 2023, ships a few-step student for a diffusion model) on every linear map of the network,
a few MiB instead of a second copy of the weights. Loading merges it into a copy of the teacher
(W + scale * B @ A), so sampling with the student costs exactly what the teacher's passes cost.

How it was trained (`avgen.train.distill`): on the teacher's own ODE trajectories (Luhman & Luhman
2021, "Knowledge Distillation in Iterative Generative Models for Improved Sampling Speed"; Liu et al.
2023, "Flow Straight and Fast"): from noise at level 1 the first pass lands, by one Euler step, where
the guided 25-step teacher was at `levels[1]`; from there the second pass lands on the teacher's clip.
One pass alone is the straight line through the first two points, followed to level 0.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from avgen.model.transformer import AVDiT
from avgen.model.weights import CheckpointError, check_weights_file, weights_file
from avgen.util import sha256_file

STUDENT_FOLDER = "student"
ADAPTER_FILE = "adapter.safetensors"
STUDENT_VERSION = 1


@dataclass(frozen=True)
class StudentConfig:
    """What a student is and what it was distilled from. `levels`: the noise levels its passes start
    at (1 = pure noise, decreasing); `teacher_sha256`: the teacher's weights file, so an adapter is
    never merged into weights it was not trained on. `griffin_lim_iters`: the Griffin-Lim iterations of
    the fast sampler's sound (None = the codec's; the shipped choice and its measurement: weights/README.md)."""

    levels: tuple[float, ...] = (1.0, 0.5)
    rank: int = 32
    alpha: float = 32.0
    teacher_sha256: str = ""
    teacher: dict = field(default_factory=dict)  # the teacher's sampling settings (steps, guidance)
    griffin_lim_iters: int | None = None
    version: int = STUDENT_VERSION

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def check(self) -> "StudentConfig":
        lv = tuple(float(v) for v in self.levels)
        if not lv or lv[0] != 1.0 or any(not 0 < b < a for a, b in zip(lv, lv[1:])) or lv[-1] <= 0:
            raise ValueError(f"student levels must start at 1 and fall strictly, staying above 0; got {self.levels}")
        if self.rank < 1:
            raise ValueError(f"the adapter's rank must be >= 1, got {self.rank}")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StudentConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "levels" in known:
            known["levels"] = tuple(float(v) for v in known["levels"])
        return cls(**known).check()


class LoRALinear(nn.Module):
    """`base(x) + scale * x A^T B^T`; B starts at zero, so the wrapped layer starts as the base layer.
    The base layer is frozen: only A and B train."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, generator: torch.Generator):
        super().__init__()
        self.base, self.scale = base, scale
        for p in base.parameters():
            p.requires_grad_(False)
        bound = 1.0 / base.in_features ** 0.5  # nn.Linear's own init range for the down projection
        a = (torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound
        self.lora_a = nn.Parameter(a.to(base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * nn.functional.linear(nn.functional.linear(x, self.lora_a), self.lora_b)


def adapted_linears(net: nn.Module) -> list[str]:
    """Names of the linear maps an adapter adapts: all of the network's, except the training-only
    label probe."""
    return [name for name, m in net.named_modules() if isinstance(m, nn.Linear) and not name.startswith("probe.")]


def attach_adapter(net: AVDiT, rank: int, alpha: float, seed: int = 0) -> AVDiT:
    """Wrap every adapted linear of `net` (in place) in a `LoRALinear`; everything else is frozen."""
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for name in adapted_linears(net):
        parent, _, leaf = name.rpartition(".")
        owner = net.get_submodule(parent) if parent else net
        setattr(owner, leaf, LoRALinear(getattr(owner, leaf), rank, alpha / rank, g))
    return net


def adapter_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors of a network with `attach_adapter`: {"<linear>.lora_a", "<linear>.lora_b"}."""
    return {f"{name}.{k}": getattr(m, k).detach().clone() for name, m in net.named_modules()
            if isinstance(m, LoRALinear) for k in ("lora_a", "lora_b")}


def load_adapter_state(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    mods = {name: m for name, m in net.named_modules() if isinstance(m, LoRALinear)}
    for name, m in mods.items():
        for k in ("lora_a", "lora_b"):
            getattr(m, k).data.copy_(state[f"{name}.{k}"])


def merge_adapter(teacher: AVDiT, state: dict[str, torch.Tensor], cfg: StudentConfig) -> AVDiT:
    """A copy of `teacher` with the adapter merged into its weights (W += scale * B A): a plain AVDiT."""
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for name in adapted_linears(student):
            lin = student.get_submodule(name)
            a, b = state[f"{name}.lora_a"].float(), state[f"{name}.lora_b"].float()
            lin.weight += cfg.scale * (b @ a).to(lin.weight)
    return student.eval()


def expected_shapes(teacher: AVDiT, rank: int) -> dict[str, tuple[int, ...]]:
    out = {}
    for name in adapted_linears(teacher):
        lin = teacher.get_submodule(name)
        out[f"{name}.lora_a"] = (rank, lin.in_features)
        out[f"{name}.lora_b"] = (lin.out_features, rank)
    return out


def check_fast(student: AVDiT | None, cfg: StudentConfig | None, steps: int, given: bool, strength: float) -> None:
    """The fast sampler needs a student, at most its number of passes, and a prompt to start from."""
    if student is None:
        raise ValueError(f"these weights have no distilled student ({STUDENT_FOLDER}/): make one with `avgen "
                         "distill`, or choose another sampler")
    if steps > len(cfg.levels):
        raise ValueError(f"the fast sampler makes a clip in 1 to {len(cfg.levels)} passes, got {steps} steps")
    if given or strength < 1:
        raise ValueError("the fast sampler makes clips from a prompt only; with given audio or video, or "
                         "strength < 1, choose another sampler")


def save_student(folder, state: dict[str, torch.Tensor], cfg: StudentConfig) -> Path:
    """Write `<folder>/config.json` and the adapter in fp16 (its few MiB count against the weights'
    budget)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, folder / ADAPTER_FILE)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return folder


def load_student(weights_dir, teacher: AVDiT) -> tuple[AVDiT, StudentConfig] | None:
    """The merged student of the weights in `weights_dir` (None if the folder has no `student/`).
    CheckpointError (one line) if its adapter is unreadable, misshapen, or was distilled from other
    weights."""
    folder = Path(weights_dir) / STUDENT_FOLDER
    if not folder.is_dir():
        return None
    try:
        cfg = StudentConfig.from_dict(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder}: unreadable student config ({' '.join(str(e).split())})") from None
    sha = sha256_file(weights_file(weights_dir))
    if cfg.teacher_sha256 != sha:
        raise CheckpointError(f"{folder} was distilled from other weights (teacher {cfg.teacher_sha256[:12]}, these "
                              f"{sha[:12]}): distil it again with `avgen distill`")
    check_weights_file(folder / ADAPTER_FILE, expected_shapes(teacher, cfg.rank))
    return merge_adapter(teacher, load_file(folder / ADAPTER_FILE), cfg), cfg


__all__ = ["ADAPTER_FILE", "STUDENT_FOLDER", "LoRALinear", "StudentConfig", "adapter_state", "adapted_linears",
           "attach_adapter", "check_fast", "expected_shapes", "load_adapter_state", "load_student", "merge_adapter",
           "save_student"]
