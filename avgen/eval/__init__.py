"""Evaluation: does what is heard happen when it is seen, and is it the same thing?

    onsets   decoded picture and sound -> onset envelopes on one 2 ms grid, detected events
    sync     global AV offset (cross-correlation), onset matching P/R/F1, AV-Align (reference form)
    judges   image and spoken digit classifiers trained here (safetensors in weights/judges)
    frechet  FD / KID in the judges' feature spaces, real-vs-real floors, bootstrap intervals
    suite    files / folders / dataset controls / generated clips -> JSON, table, plots

The command line is `avgen eval` (avgen/cli/eval.py) and `avgen judges train`.
"""
from .onsets import AVSignal, Detected, OnsetConfig, detect_events, envelope, tracks
from .sync import av_align, estimate_offset, match_onsets

__all__ = ["AVSignal", "Detected", "OnsetConfig", "av_align", "detect_events", "envelope", "estimate_offset",
           "match_onsets", "tracks"]
