"""Signal analysis shared by the model and the evaluation suite: decoded picture and sound -> onset
envelopes on one time grid, and the events they hold (`onsets.py`).

It sits below `avgen.model` (which reads the events of a given modality to build a timeline) and
`avgen.eval` (which measures sync with them), so both use one detector.
"""
from .onsets import AVSignal, Detected, OnsetConfig, Track, detect_events, envelope, grey, onsets, tracks

__all__ = ["AVSignal", "Detected", "OnsetConfig", "Track", "detect_events", "envelope", "grey", "onsets", "tracks"]
