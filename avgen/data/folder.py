"""`folder:PATH`: the user's own clips as training data.

Every video file with sound in PATH (recursively: mp4, mkv, webm, mov, m4v, avi) is decoded once with
PyAV, conformed to the model's `ClipSpec` (centre crop + resize, grey/RGB, frame rate, sample rate,
downmix to mono; audio placed by the container's timing) and cached on disk as .npy arrays (no
pickles), so later epochs and runs never decode again. Each file gives `floor(length / duration)`
non-overlapping windows. A sidecar `NAME.txt` next to `NAME.mp4` is that file's caption: its words, in
order, name the file's events; without one the clip trains unconditionally (prompt "").

Event timelines are derived from the clips themselves: the evaluation suite's own detectors
(`avgen.signal`) find the events of each captioned file in its sound (and, when the sound's count does
not fit, in its picture), and where their number equals the caption's number of words, word k names
event k. Those clips carry events (and so train the timeline input and measure the layout prior); the
others say why not (`timeline_report`, `avgen data stats --dataset folder:PATH`). Derived timelines are
cached beside the arrays.

Splits are by file, never by window: a file is held out (the test split, for validation and the
judges) when a hash of its path inside the folder falls in the first `holdout` share. Files that cannot
be read, have no audio track or are too short are skipped and listed in ONE warning; so are words only
one file uses, and a folder where no caption matches its events.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avgen.signal.onsets import AVSignal, detect_events, grey, tracks

from .clip import Clip, ClipSpec, Event
from .events import SPLIT_CODE
from .io import VIDEO_EXTS, AVReadError, conform, decode_av, declared_duration
from .prompt import split_words

MAX_CAPTION_WORDS = 16
HOLDOUT = 0.1  # the share of files held out (by a hash of their path in the folder)
# What the cached arrays depend on besides the file and the spec: bump it when decoding changes
# (2: frames shrunk to `decode_side(spec)` as they are decoded, not from full size).
DECODER_VERSION = 2
TIMELINE_VERSION = 2  # bump when the derivation of events changes (2: colour read as RGB RMS, not luma)


@dataclass
class Window:
    file: Path
    start_frame: int
    prompt: str
    events: list[Event] | None = None  # on the window's clock; None: no timeline (see `why`)
    why: str = ""  # why the window has no timeline


@dataclass
class Derived:
    """A file's events as derived from its clip: labelled, in order (None when they could not be)."""

    events: list[tuple[str, float, float]] | None
    why: str = ""  # why there are none
    counts: dict = field(default_factory=dict)  # {"words": n, "sound": k, "picture": j}


def default_cache_dir() -> Path:
    return Path(os.environ.get("AVGEN_CACHE", Path.home() / ".cache" / "avgen")) / "folder"


def decode_side(spec: ClipSpec) -> int:
    """The largest side a file's frames are decoded at: four times the clip's (at least 64 px), enough
    for an area resize to the clip's size, and a 4K or 8K phone clip never sits in memory at full size."""
    return max(64, 4 * max(spec.height, spec.width))


def _cache_key(path: Path, spec: ClipSpec) -> str:
    st = path.stat()
    ident = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, spec.to_dict(), DECODER_VERSION],
                       sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def held_out(relative: Path, share: float) -> bool:
    """Whether a file (its path inside the folder) belongs to the test split: stable across runs,
    machines and additions to the folder."""
    return int(hashlib.sha256(relative.as_posix().encode()).hexdigest(), 16) % 10_000 < share * 10_000


def read_caption(p: Path) -> list[str]:
    caption = p.with_suffix(".txt")
    if not caption.is_file():
        return []
    return split_words(caption.read_text(encoding="utf-8", errors="replace"))[:MAX_CAPTION_WORDS]


def derive_events(frames: np.ndarray, audio: np.ndarray, spec: ClipSpec, words: list[str]) -> Derived:
    """A file's conformed frames (T, H, W, C) uint8 and audio -> its caption's words placed on its events,
    found by the evaluation suite's detectors: the sound's events when their number is the caption's,
    else the picture's when theirs is, else none."""
    if not words:
        return Derived(None, "no caption")
    sig = AVSignal(grey(frames.astype(np.float32) / 255.0), np.arange(len(frames)) / spec.fps, float(spec.fps),
                   audio.astype(np.float32), spec.sample_rate)
    found = {m: detect_events(t) for m, t in tracks(sig).items()}
    counts = {"words": len(words), "sound": len(found["audio"]), "picture": len(found["video"])}
    for m in ("audio", "video"):
        if len(found[m]) == len(words):
            events = [(w, round(e.onset_s, 4), round(e.end_s, 4)) for w, e in zip(words, found[m])]
            return Derived(events, "", counts)
    if not found["audio"] and not found["video"]:
        return Derived(None, "no event detected in the sound or the picture", counts)
    return Derived(None, f"{len(words)} word(s) in the caption, {len(found['audio'])} event(s) in the sound, "
                         f"{len(found['video'])} in the picture", counts)


class FolderDataset:
    name = "folder"

    def __init__(self, root, split: str = "train", seed: int = 0, spec: ClipSpec | None = None,
                 cache_dir=None, max_file_s: float = 600.0, holdout: float = HOLDOUT, length: int | None = None,
                 timelines: bool = True):
        if split not in SPLIT_CODE:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 0 <= holdout < 1:
            raise ValueError(f"holdout must lie in [0, 1), got {holdout!r}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ValueError(f"folder dataset {self.root} is not a directory")
        self.split, self.seed, self.spec = split, int(seed), spec or ClipSpec()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.max_file_s, self.holdout, self.timelines = max_file_s, holdout, timelines
        every = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())
        test = [p for p in every if held_out(p.relative_to(self.root), holdout)]
        if len(test) == len(every):  # a folder of one or two files: it all trains, nothing is held out
            test = []
        self.held_out_files = [p.relative_to(self.root).as_posix() for p in test]
        files = test if split == "test" else [p for p in every if p not in set(test)]
        if split == "test" and not files:
            raise ValueError(f"folder dataset {self.root}: no file is held out for testing ({len(every)} file(s), "
                             f"holdout {holdout:g}); add files or raise holdout")
        # the vocabulary is every caption's words, train and test alike, so both splits read one way
        captions = {p: read_caption(p) for p in every}
        self.vocab = tuple(sorted({w for words in captions.values() for w in words}))
        self.max_events = max([len(words) for words in captions.values()] + [1])
        uses = Counter(w for words in captions.values() for w in set(words))
        self.rare_words = sorted(w for w, n in uses.items() if n == 1)
        self.skipped: list[tuple[str, str]] = []
        self.windows: list[Window] = []
        self.derived: dict[Path, Derived] = {}
        self._arrays: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        for p in files:
            self._index_file(p, captions[p])
        self._warn()
        if not self.windows:
            raise ValueError(f"folder dataset {self.root}: no usable video file with sound of at least "
                             f"{self.spec.duration:g} s (found {len(files)} candidate file(s) in the {split} split)")
        gaps = [b[1] - a[2] for d in self.derived.values() if d.events for a, b in zip(d.events, d.events[1:])]
        self.min_gap_frames = max(1, int(np.floor(min(gaps) * self.spec.fps))) if gaps else 1
        self.length = length or len(self.windows)

    def _warn(self) -> None:
        notes = []
        if self.skipped:
            notes.append(f"skipped {len(self.skipped)} file(s): "
                         + "; ".join(f"{Path(f).name}: {why}" for f, why in self.skipped))
        if self.rare_words:
            notes.append(f"{len(self.rare_words)} word(s) appear in one caption only, too few to learn: "
                         + ", ".join(self.rare_words[:10]) + (" ..." if len(self.rare_words) > 10 else ""))
        captioned = [d for d in self.derived.values() if d.why != "no caption"]
        if self.timelines and captioned and not any(d.events for d in captioned):
            notes.append(f"none of the {len(captioned)} captioned file(s) shows as many events as its caption has "
                         "words, so no clip gets a timeline (see `avgen data stats --dataset folder:...`)")
        if notes:
            warnings.warn(f"folder dataset {self.root}: " + " | ".join(notes), stacklevel=3)

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

    def _derive(self, p: Path, words: list[str]) -> Derived:
        """The file's derived timeline, from the cache when this file, spec and caption were seen before."""
        fpath, _ = self._cache_paths(p)
        ident = hashlib.sha256(json.dumps([words, TIMELINE_VERSION]).encode()).hexdigest()[:12]
        path = fpath.with_name(fpath.name.replace(".frames.npy", f".events-{ident}.json"))
        if path.is_file():
            d = json.loads(path.read_text())
            return Derived([tuple(e) for e in d["events"]] if d["events"] is not None else None, d["why"], d["counts"])
        frames, audio = self._load(p)
        derived = derive_events(frames, audio, self.spec, words)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"events": derived.events, "why": derived.why, "counts": derived.counts}))
        os.replace(tmp, path)
        return derived

    def _index_file(self, p: Path, words: list[str]) -> None:
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
        derived = self._derive(p, words) if self.timelines else Derived(None, "timelines off")
        self.derived[p] = derived
        for k in range(len(frames) // n):
            self.windows.append(self._window(p, k * n, words, derived))

    def _window(self, p: Path, start: int, words: list[str], derived: Derived) -> Window:
        """Window `start` of a file: the events inside it (and their labels as its prompt), or the caption
        and the reason it has no timeline."""
        if derived.events is None:
            return Window(p, start, " ".join(words), None, derived.why)
        t0, t1 = start / self.spec.fps, (start + self.spec.num_frames) / self.spec.fps
        inside = [e for e in derived.events if t0 <= e[1] and e[2] <= t1]
        if any(e[1] < t1 and e[2] > t0 for e in derived.events if e not in inside):
            return Window(p, start, " ".join(w for w, *_ in inside), None, "an event crosses the window's edge")
        events = [Event(w, round(a - t0, 4), round(b - t0, 4)) for w, a, b in inside]
        return Window(p, start, " ".join(e.label for e in events), events)

    # -- what the folder holds
    def timeline_report(self) -> dict:
        """How many windows got a timeline, why the others did not, and the event lengths per label."""
        why = Counter(w.why for w in self.windows if w.events is None)
        lengths: dict[str, list[float]] = {}
        for w in self.windows:
            for e in w.events or []:
                lengths.setdefault(e.label, []).append(e.end_s - e.start_s)
        return {"split": self.split, "files": len(self.derived), "windows": len(self.windows),
                "windows_with_timeline": sum(w.events is not None for w in self.windows),
                "without_timeline": dict(why.most_common()), "held_out_files": len(self.held_out_files),
                "vocab": list(self.vocab), "words_in_one_caption_only": self.rare_words,
                "event_seconds": {lab: {"n": len(v), "median": round(float(np.median(v)), 3)}
                                  for lab, v in sorted(lengths.items())},
                "skipped": [f"{Path(f).name}: {why}" for f, why in self.skipped]}

    # -- dataset API (same as EventDataset)
    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Clip:
        return self.clip(index)

    def parse_prompt(self, prompt: str) -> list[str]:
        """A caption's words (the prompt rule's separators; the vocabulary is the captions' own words)."""
        return split_words(prompt)[:MAX_CAPTION_WORDS]

    def random_labels(self, rng: np.random.Generator) -> list[str]:
        """The labels of a random window of this split (what `avgen eval --generate` prompts with)."""
        return self.parse_prompt(self.windows[int(rng.integers(len(self.windows)))].prompt)

    def clip(self, index: int, labels=None) -> Clip:
        w = self.windows[int(index) % len(self.windows)]
        frames, audio = self._load(w.file)
        n, spf = self.spec.num_frames, self.spec.samples_per_frame
        f = frames[w.start_frame: w.start_frame + n].astype(np.float32) / 255.0
        a = audio[w.start_frame * spf: (w.start_frame + n) * spf]
        meta = {"dataset": self.name, "file": str(w.file), "start_s": w.start_frame / self.spec.fps,
                "index": int(index)}
        if w.events is None and w.why:
            meta["no_timeline"] = w.why
        return Clip(f, a.copy(), self.spec.fps, self.spec.sample_rate, list(w.events or []), w.prompt, meta)
