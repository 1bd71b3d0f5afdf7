"""Evaluation: does what is heard happen when it is seen, and is it the same thing?

    sync        global AV offset (cross-correlation), onset matching P/R/F1, AV-Align (reference form)
    judges      image and spoken digit classifiers trained here (safetensors in weights/judges)
    frechet     FD / KID in the judges' feature spaces, real-vs-real floors, bootstrap intervals
    analysis    one clip's record and many clips' summary;  controls  altered real clips;  report  output
    suite       all of the above in one namespace
    denoise     a model's held-out x0 error per noise level
    codec_check what the codec's round trip costs on real speech

Onset envelopes and events come from `avgen.signal`, shared with the model. Evaluation sits beside
training (neither imports the other); clips made by a model for it come from `avgen.api.evaluate`.
The command line is `avgen eval` (avgen/cli/eval.py) and `avgen judges train`.
"""
from avgen.eval.sync import av_align, estimate_offset, match_onsets
from avgen.signal.onsets import AVSignal, Detected, OnsetConfig, detect_events, envelope, tracks

__all__ = ["AVSignal", "Detected", "OnsetConfig", "av_align", "detect_events", "envelope", "estimate_offset",
           "match_onsets", "tracks"]
