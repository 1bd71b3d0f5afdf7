"""Full-state training checkpoints: one safetensors file per checkpoint, written atomically.

A checkpoint holds everything `--resume` needs to continue bit for bit:
  tensors  model.*, ema.*, optimizer.state.<param index>.<name>, rng.torch, rng.cuda.<i>
  metadata (JSON in the safetensors header, key "avgen"): progress (step, data position, skipped
           steps), the resolved training config, the network's diffusers config, optimizer
           param groups, LR scheduler state, numpy / python RNG states.
Nothing is pickled, so loading cannot execute code.

Atomicity: the file is written under a temporary name in the same folder, fsynced, renamed over
the final name with `os.replace` (atomic on POSIX), and the folder is fsynced; a process killed at
any instant leaves either the previous set of checkpoints or the new one, never a torn file.
Temporary files left by a killed writer are removed by the next save.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from avgen.model.config import KEYLESS_MLP_ACTIVATION
from avgen.model.weights import CheckpointError, check_weights_file

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8,})\.safetensors$")
_META_KEY = "avgen"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------- files
def checkpoint_path(run_dir, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.safetensors"


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> Path:
    """Write tensors + JSON metadata to `path` so that readers never see a partial file.

    When the write fails (a full disk, a vanished folder) the temporary file is removed, so the
    space it took is free again and the checkpoints already there are untouched, and the error is
    a CheckpointError naming the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:  # safetensors reports a failed write as SafetensorError
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {_reason(e, path.parent)}") from e
    _fsync_dir(path.parent)
    return path


def _reason(e: Exception, folder: Path) -> str:
    """One line on why a write failed, with the free space when that is the likely cause."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return text
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in text:
        return f"{text} ({free / 2 ** 20:.1f} MB free on that disk); free some space and resume with --resume"
    return text


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors on CPU, metadata) of one checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
        tensors = load_file(path)
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({e}); resume from an earlier one by "
                              "deleting it") from e
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    return tensors, meta


def prune(run_dir, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and any temporary files; returns the deleted."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    # one writer per run (rank 0), so any temporary file here is a killed writer's leftover
    doomed = list_checkpoints(run_dir)[:-keep_last] + sorted(folder.glob(".step-*.tmp"))
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


# ---------------------------------------------------------------------------- state <-> tensors
def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in state.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    head = prefix + "."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def optimizer_to_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split `optimizer.state_dict()` into tensors and a JSON-able remainder."""
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in _unprefixed("optimizer.state", tensors).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON turned tuples (AdamW's betas) into lists; give them back their type
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Global RNG states. Training draws nothing from them (every draw is keyed by sample index),
    but third-party code might, so they are restored too."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": [kind, keys.tolist(), pos, has_gauss, gauss], "python": [py_version, list(py_state), py_gauss]}
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    per_device = _unprefixed("rng.cuda", tensors)
    cuda = [per_device[k] for k in sorted(per_device, key=int)]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


def network_config(model) -> dict:
    """The diffusers config that rebuilds `model` (`AVDiT.from_config`), without diffusers' private
    bookkeeping keys (`_name_or_path` is a Path after `from_pretrained`, and says nothing about the net)."""
    return {k: v for k, v in model.config.items() if not k.startswith("_")}


def save_training_state(run_dir, *, model, ema, optimizer, scheduler, progress: dict, config: dict,
                        keep_last: int) -> Path:
    """Checkpoint at `progress["step"]`, then prune to the newest `keep_last`."""
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer.state_dict())
    rng_tensors, rng_meta = _rng_state()
    tensors = {**_prefixed("model", model.state_dict()), **_prefixed("ema", ema.state_dict()),
               **opt_tensors, **rng_tensors}
    meta = {"format": FORMAT_VERSION, "progress": progress, "train_config": config,
            "model_config": network_config(model), "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
            "rng": rng_meta}
    path = atomic_save(tensors, meta, checkpoint_path(run_dir, progress["step"]))
    prune(run_dir, keep_last)
    return path


def load_training_state(path, *, model, ema, optimizer, scheduler) -> dict:
    """Restore every piece saved by `save_training_state` in place; returns the metadata."""
    tensors, meta = read_checkpoint(path)
    # the activation changes the function without changing a tensor's shape, so the strict load below
    # cannot catch a mismatch (a checkpoint written before the key existed was trained with the tanh GELU)
    trained = meta.get("model_config", {}).get("mlp_activation", KEYLESS_MLP_ACTIVATION)
    if trained != model.config.mlp_activation:
        raise CheckpointError(f"checkpoint {path} was trained with mlp_activation={trained!r}, this config asks "
                              f"for {model.config.mlp_activation!r}: resume without --preset, or add "
                              f"--set model.mlp_activation={trained}")
    try:
        model.load_state_dict(_unprefixed("model", tensors), strict=True)
        ema.load_state_dict(_unprefixed("ema", tensors))
        optimizer.load_state_dict(optimizer_from_tensors(tensors, meta["optimizer"]))
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {e}") from e
    scheduler.load_state_dict(meta["scheduler"])
    _restore_rng(tensors, meta["rng"])
    return meta


def load_ema_weights(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(EMA state dict, metadata) of a checkpoint: what `avgen export` ships."""
    tensors, meta = read_checkpoint(path)
    return _unprefixed("ema", tensors), meta


__all__ = ["CHECKPOINT_DIR", "CheckpointError", "atomic_save", "check_weights_file",
           "checkpoint_path", "latest_checkpoint", "list_checkpoints", "load_ema_weights", "load_training_state",
           "optimizer_from_tensors", "optimizer_to_tensors", "prune", "read_checkpoint", "save_training_state"]
