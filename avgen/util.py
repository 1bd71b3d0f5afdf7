"""Small helpers that every layer uses: one-line messages, strict JSON, atomic text files.

Strict JSON: every file avgen writes parses with a strict parser (RFC 8259 has no NaN or Infinity),
so an undefined figure is written as null, never as a bare `NaN` that `json.loads` accepts and
most other readers refuse.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from pathlib import Path


def one_line(text, limit: int = 300) -> str:
    """`text` on one line (whitespace runs collapsed), cut to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_safe(obj):
    """`obj` with every non-finite float replaced by None (recursively through dicts, lists and
    tuples), and numpy scalars / arrays and paths turned into plain JSON values."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    item = getattr(obj, "item", None)  # numpy scalars (and 0-d arrays)
    if callable(item) and getattr(obj, "ndim", 1) == 0:
        return json_safe(item())
    tolist = getattr(obj, "tolist", None)  # numpy arrays
    if callable(tolist):
        return json_safe(tolist())
    return obj


def dumps(obj, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON text of `obj` (see `json_safe`); any other object is written as its `str`."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False, default=str)


def atomic_write_text(path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename:
    a reader (or a process killed mid-write) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path, obj, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """`obj` as strict JSON (plus a final newline) at `path`, written atomically."""
    return atomic_write_text(path, dumps(obj, indent, sort_keys) + "\n")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def output_paths(out, n: int) -> list[Path]:
    """Where n generated clips go: OUT itself for one clip; OUT_000.mp4, OUT_001.mp4, ... for several."""
    out = Path(out)
    return [out] if n == 1 else [out.with_name(f"{out.stem}_{i:03d}{out.suffix}") for i in range(n)]


def package_versions() -> dict[str, str]:
    """Versions of what decides a result: recorded in sidecars, run folders and exports."""
    # imported here, not at module level: this module is imported by everything, torch by little of it
    import diffusers
    import numpy
    import torch
    import torchaudio

    import avgen

    return {"avgen": avgen.__version__, "torch": torch.__version__, "torchaudio": torchaudio.__version__,
            "diffusers": diffusers.__version__, "numpy": numpy.__version__, "python": platform.python_version()}


__all__ = ["atomic_write_text", "dumps", "json_safe", "one_line", "output_paths", "package_versions", "sha256_file", "write_json"]
