"""`folder:PATH`: the user's own clips as training data.

Every video file with sound in PATH (recursively: mp4, mkv, webm, mov, m4v, avi) is decoded
once with PyAV, conformed to the model's `ClipSpec` (centre crop + resize, grey/RGB, frame
rate, sample rate, downmix to mono; audio placed by the container's timing) and cached
on disk as .npy arrays (no pickles), so later epochs and runs never decode again. Each
file gives `floor(length / duration)` non-overlapping windows (at least one when it is
long enough). A sidecar `NAME.txt` next to `NAME.mp4` is that file's caption/prompt;
without one the clip trains unconditionally (prompt ""). Files that cannot be read, have
no audio track or are too short are skipped and listed in ONE warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .clip import Clip, ClipSpec
from .events import SPLIT_CODE
from .io import VIDEO_EXTS, AVReadError, conform, decode_av, declared_duration
from .prompt import split_words

MAX_CAPTION_WORDS = 16


@dataclass
class Window:
    file: Path
    start_frame: int
    prompt: str


def default_cache_dir() -> Path:
    return Path(os.environ.get("AVGEN_CACHE", Path.home() / ".cache" / "avgen")) / "folder"


# What the cached arrays depend on besides the file and the spec: bump it when decoding changes
# (2: frames shrunk to `decode_side(spec)` as they are decoded, not from full size).
DECODER_VERSION = 2


def decode_side(spec: ClipSpec) -> int:
    """The largest side a file's frames are decoded at: four times the clip's (at least 64 px), enough
    for an area resize to the clip's size, and a 4K or 8K phone clip never sits in memory at full size."""
    return max(64, 4 * max(spec.height, spec.width))


def _cache_key(path: Path, spec: ClipSpec) -> str:
    st = path.stat()
    ident = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, spec.to_dict(), DECODER_VERSION],
                       sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


class FolderDataset:
    name = "folder"

    def __init__(self, root, split: str = "train", seed: int = 0, spec: ClipSpec | None = None,
                 cache_dir=None, max_file_s: float = 600.0, holdout: float = 0.0, length: int | None = None):
        if split not in SPLIT_CODE:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ValueError(f"folder dataset {self.root} is not a directory")
        self.split, self.seed, self.spec = split, int(seed), spec or ClipSpec()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.max_file_s = max_file_s
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())
        if holdout > 0:  # a stable split by file name hash: the same file is always on the same side
            def is_test(p):
                return int(hashlib.sha256(p.name.encode()).hexdigest(), 16) % 1000 < holdout * 1000
            files = [p for p in files if is_test(p) == (split == "test")]
        self.skipped: list[tuple[str, str]] = []
        self.windows: list[Window] = []
        self._arrays: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        for p in files:
            self._index_file(p)
        if self.skipped:
            listing = "; ".join(f"{Path(f).name}: {why}" for f, why in self.skipped)
            warnings.warn(f"folder dataset {self.root}: skipped {len(self.skipped)} file(s): {listing}",
                          stacklevel=2)
        if not self.windows:
            raise ValueError(f"folder dataset {self.root}: no usable video file with sound of at least "
                             f"{self.spec.duration:g} s (found {len(files)} candidate file(s))")
        words = sorted({w for win in self.windows for w in split_words(win.prompt)})
        self.vocab = tuple(words)
        self.max_events = max([len(split_words(w.prompt)) for w in self.windows] + [1])
        self.length = length or len(self.windows)

    # -- decoding + cache
    def _cache_paths(self, p: Path) -> tuple[Path, Path]:
        key = _cache_key(p, self.spec)
        return self.cache_dir / f"{key}.frames.npy", self.cache_dir / f"{key}.audio.npy"

    def _load(self, p: Path) -> tuple[np.ndarray, np.ndarray]:
        if p in self._arrays:
            return self._arrays[p]
        fpath, apath = self._cache_paths(p)
        bad = fpath.with_name(fpath.name.replace(".frames.npy", ".unusable.txt"))
        if bad.exists():  # this exact file failed before: do not decode it again
            raise AVReadError(f"{p}: {bad.read_text()}")
        if fpath.exists() and apath.exists():
            arrays = np.load(fpath, allow_pickle=False), np.load(apath, allow_pickle=False)
        else:
            try:
                declared = declared_duration(p)  # refuse a short file from its header, before decoding it
                if declared is not None and declared < self.spec.duration - 0.5 / self.spec.fps:
                    raise AVReadError(f"{p}: too short ({declared:.2f} s < {self.spec.duration:g} s)")
                clip = conform(decode_av(p, max_duration_s=self.max_file_s, max_side=decode_side(self.spec)),
                               self.spec)
            except AVReadError as e:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                bad.write_text(str(e).split(": ", 1)[-1])
                raise
            frames = np.clip(clip.frames * 255 + 0.5, 0, 255).astype(np.uint8)
            arrays = frames, clip.audio.astype(np.float32)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for path, arr in ((fpath, arrays[0]), (apath, arrays[1])):
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, arr, allow_pickle=False)
                os.replace(tmp, path)
        self._arrays[p] = arrays
        return arrays

    def _index_file(self, p: Path) -> None:
        try:
            frames, _ = self._load(p)
        except AVReadError as e:
            self.skipped.append((str(p), str(e).split(": ", 1)[-1]))
            return
        except (OSError, ValueError) as e:
            self.skipped.append((str(p), f"{type(e).__name__}: {e}"))
            return
        n = self.spec.num_frames
        if len(frames) < n:
            self.skipped.append((str(p), f"too short ({len(frames) / self.spec.fps:.2f} s < {self.spec.duration:g} s)"))
            self._arrays.pop(p, None)
            return
        caption = p.with_suffix(".txt")
        prompt = ""
        if caption.is_file():
            prompt = " ".join(split_words(caption.read_text(encoding="utf-8", errors="replace"))[:MAX_CAPTION_WORDS])
        for k in range(len(frames) // n):
            self.windows.append(Window(p, k * n, prompt))

    # -- dataset API (same as EventDataset)
    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Clip:
        return self.clip(index)

    def parse_prompt(self, prompt: str) -> list[str]:
        """A caption's words (the prompt rule's separators; the vocabulary is the captions' own words)."""
        return split_words(prompt)[:MAX_CAPTION_WORDS]

    def clip(self, index: int, labels=None) -> Clip:
        w = self.windows[int(index) % len(self.windows)]
        frames, audio = self._load(w.file)
        n, spf = self.spec.num_frames, self.spec.samples_per_frame
        f = frames[w.start_frame: w.start_frame + n].astype(np.float32) / 255.0
        a = audio[w.start_frame * spf: (w.start_frame + n) * spf]
        meta = {"dataset": self.name, "file": str(w.file), "start_s": w.start_frame / self.spec.fps,
                "index": int(index)}
        return Clip(f, a.copy(), self.spec.fps, self.spec.sample_rate, [], w.prompt, meta)
