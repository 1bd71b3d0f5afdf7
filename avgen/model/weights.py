"""Weights on disk: where a folder keeps them, how untrusted files are checked, and loading the network.

An exported weights folder (`avgen export`, the shipped `weights/avgen`) has the diffusers layout:
`transformer/config.json` + `transformer/diffusion_pytorch_model.safetensors`, the schedulers, and
optionally `postfilter/`. Weights are safetensors only (reading them never executes code), and a file
is checked tensor by tensor against the network its config describes before anything is loaded, so a
missing, extra or reshaped tensor is named, never silently skipped or re-initialised.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from avgen.model.config import DEFAULT_WEIGHTS
from avgen.model.transformer import AVDiT


class CheckpointError(ValueError):
    """A checkpoint (or weights file) is missing, unreadable, cannot be written, or does not fit the
    model it is loaded into; the message names the file."""


NETWORK_FILE = "diffusion_pytorch_model.safetensors"


def weights_file(weights_dir) -> Path:
    """The network's tensors in an exported weights folder."""
    return Path(weights_dir) / "transformer" / NETWORK_FILE


def network_folder(path) -> Path:
    """A weights folder, or its `transformer/` subfolder, -> the folder holding the network's files."""
    folder = Path(path)
    return folder / "transformer" if (folder / "transformer").is_dir() else folder


def tensor_shapes(path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, nothing else read. A file that is not
    safetensors (a pickle, a truncated or corrupted file) is a CheckpointError naming it; safetensors
    never executes what it reads."""
    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})") from None


def check_weights_file(path, expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse weights whose tensors are not exactly `expected` (names and shapes) before any is
    loaded: a missing, extra or reshaped tensor is never silently skipped or re-initialised."""
    found = tensor_shapes(path)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    reshaped = [k for k in sorted(set(expected) & set(found)) if tuple(found[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing ({', '.join(missing[:3])}{' ...' * (len(missing) > 3)})")
    if extra:
        problems.append(f"{len(extra)} tensor(s) the network does not have ({', '.join(extra[:3])}"
                        f"{' ...' * (len(extra) > 3)})")
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} tensor(s) of the wrong shape ({k}: {list(found[k])} in the file, "
                        f"{list(expected[k])} in the network)")
    if problems:
        raise CheckpointError(f"{path}: does not fit the network its config describes: {'; '.join(problems)}")


def check_weights_folder(weights_dir) -> None:
    """An exported weights folder (or its transformer/ subfolder) is checked against the network its
    config.json describes, built on the meta device (no memory, no weights read). A folder without a
    weights file passes: `load_network` says what is missing and how to make it."""
    path = network_folder(weights_dir) / NETWORK_FILE
    if not path.is_file():
        return
    try:
        config = AVDiT.load_config(path.parent, local_files_only=True)
        with torch.device("meta"):
            network = AVDiT.from_config(config)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path.parent / 'config.json'}: not a usable network config "
                              f"({' '.join(str(e).split())})") from None
    check_weights_file(path, {k: tuple(v.shape) for k, v in network.state_dict().items()})


def load_network(path) -> AVDiT:
    """An exported weights folder (or its transformer/ subfolder) -> `AVDiT` in fp32, offline, checked
    first (`check_weights_folder`). fp32 whatever the stored dtype (exports may be fp16): the device
    decides the compute precision."""
    folder = network_folder(path)
    tensors = folder / NETWORK_FILE
    if not tensors.is_file():
        raise FileNotFoundError(f"no model weights at {path} (expected {weights_file(path)}); train one with "
                                "`avgen train` and `avgen export RUN --out DIR`, then pass --weights DIR")
    check_weights_folder(folder)
    return AVDiT.from_pretrained(folder, local_files_only=True, use_safetensors=True, torch_dtype=torch.float32)


__all__ = ["DEFAULT_WEIGHTS", "NETWORK_FILE", "CheckpointError", "check_weights_file", "check_weights_folder", "load_network",
           "network_folder", "tensor_shapes", "weights_file"]
