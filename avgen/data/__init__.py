"""Datasets and clip I/O. Every dataset yields `Clip`s with the same schema.

    make_dataset("talking-digits" | "shapes" | "folder:PATH", split=..., seed=..., spec=...)
"""
from __future__ import annotations

from .clip import Clip, ClipSpec, Event
from .events import EventDataset
from .folder import FolderDataset
from .shapes import Shapes
from .sources import SourceError, default_data_root
from .talking_digits import TalkingDigits

DATASETS = ("talking-digits", "shapes", "folder:PATH")


def make_dataset(name: str, split: str = "train", seed: int = 0, spec: ClipSpec | None = None,
                 data_root=None, **kwargs):
    """Build a dataset by name. Raises ValueError for an unknown name."""
    if name == "talking-digits":
        return TalkingDigits(split=split, seed=seed, spec=spec, data_root=data_root, **kwargs)
    if name == "shapes":
        return Shapes(split=split, seed=seed, spec=spec, **kwargs)
    if name.startswith("folder:"):
        return FolderDataset(name[len("folder:"):], split=split, seed=seed, spec=spec, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


__all__ = ["Clip", "ClipSpec", "Event", "EventDataset", "SourceError", "default_data_root", "make_dataset", "DATASETS"]
