"""Readers for the public source files: FSDD recordings (WAV) and MNIST (IDX, gzip).

Every reader checks what it reads and fails with a `SourceError` that names the file
and says how to get a good copy, never with a bare traceback from deep inside numpy.
"""
from __future__ import annotations

import gzip
import os
import re
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
FSDD_TEST_TAKES = range(0, 5)  # FSDD's own convention: takes 0-4 are the test split
MNIST_TEST_FROM = 8000  # MNIST t10k indices >= 8000 are our test split, the rest train
MNIST_FILES = {"images": "t10k-images-idx3-ubyte.gz", "labels": "t10k-labels-idx1-ubyte.gz"}
HOW_TO_GET = "get a good copy with `avgen data download --root DIR` and pass --data-root DIR (or set AVGEN_DATA)"


class SourceError(RuntimeError):
    """A source file is missing, truncated or corrupt."""


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_data_root() -> Path:
    """`$AVGEN_DATA`, else `../shared/data` next to the repository when it exists."""
    env = os.environ.get("AVGEN_DATA")
    if env:
        return Path(env).expanduser()
    return (repo_root().parent / "shared" / "data").resolve()


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    root = Path(data_root).expanduser() if data_root else default_data_root()
    if not root.is_dir():
        raise SourceError(f"data root {root} does not exist; {HOW_TO_GET}")
    return root


# ----------------------------------------------------------------------------- FSDD
@dataclass(frozen=True)
class Recording:
    digit: int
    speaker: str
    take: int
    path: Path


def list_fsdd(root: Path) -> list[Recording]:
    rec_dir = root / "fsdd" / "recordings"
    if not rec_dir.is_dir():
        raise SourceError(f"FSDD folder {rec_dir} is missing; {HOW_TO_GET}")
    out = []
    for name in sorted(os.listdir(rec_dir)):
        m = FSDD_NAME.match(name)
        if m:
            out.append(Recording(int(m[1]), m[2], int(m[3]), rec_dir / name))
    if not out:
        raise SourceError(f"FSDD folder {rec_dir} holds no recordings named digit_speaker_take.wav; {HOW_TO_GET}")
    return out


def fsdd_split(rec: Recording) -> str:
    return "test" if rec.take in FSDD_TEST_TAKES else "train"


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV -> (float32 mono samples in [-1, 1], sample rate)."""
    try:
        with wave.open(str(path), "rb") as w:
            sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise SourceError(f"{path} is missing; {HOW_TO_GET}") from None
    except (wave.Error, EOFError, OSError) as e:
        raise SourceError(f"{path} is not a readable WAV file ({e}); {HOW_TO_GET}") from None
    if width != 2:
        raise SourceError(f"{path}: expected 16-bit PCM, found {8 * width}-bit; {HOW_TO_GET}")
    if len(raw) != n * ch * width or n == 0:
        raise SourceError(f"{path} is truncated ({len(raw)} of {n * ch * width} data bytes); {HOW_TO_GET}")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if ch > 1:
        x = x.reshape(-1, ch).mean(axis=1)
    return x, sr


# ----------------------------------------------------------------------------- MNIST
def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SourceError(f"{path} is missing; {HOW_TO_GET}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise SourceError(f"{path} is not a readable gzip file ({e}); {HOW_TO_GET}") from None
    head = 4 + 4 * dims
    if len(data) < head or int.from_bytes(data[:4], "big") != magic:
        raise SourceError(f"{path} is not an MNIST IDX file (bad magic number); {HOW_TO_GET}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    need = head + int(np.prod(shape))
    if len(data) != need:
        raise SourceError(f"{path} is truncated or padded ({len(data)} bytes, expected {need}); {HOW_TO_GET}")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(shape)


def read_mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST t10k -> (images uint8 (N, 28, 28), labels uint8 (N,))."""
    d = root / "mnist"
    images = _read_idx(d / MNIST_FILES["images"], 2051, 3)
    labels = _read_idx(d / MNIST_FILES["labels"], 2049, 1)
    if len(images) != len(labels):
        raise SourceError(f"{d}: {len(images)} images but {len(labels)} labels; {HOW_TO_GET}")
    if labels.max(initial=0) > 9:
        raise SourceError(f"{d / MNIST_FILES['labels']}: labels outside 0-9; {HOW_TO_GET}")
    return images, labels


def mnist_split_indices(n: int, split: str) -> np.ndarray:
    idx = np.arange(n)
    return idx[idx >= MNIST_TEST_FROM] if split == "test" else idx[idx < MNIST_TEST_FROM]
