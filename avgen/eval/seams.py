"""Seams of a long clip (made in windows, `avgen.model.chunks`): are events next to a seam as well
synchronised and as well counted as events elsewhere?

Each clip's time is cut into windows of 2 x `radius` seconds: one centred on every seam, and the
others tiling the time between them that is further than `radius` from any seam (seams closer than
2 x `radius`, from windows shortened to keep events whole, share events between their windows). In each window the
picture's and the sound's events are counted (by onset) and the counts compared; each matched pair of
picture and sound onsets gives an offset, filed by whether it lies within `radius` of a seam. A seam
that broke the clip shows as lower count agreement or larger offsets in the seam windows.
"""
from __future__ import annotations

import math

import numpy as np

from avgen.eval.sync import match_onsets

# Half a second each side: seams of windows that add 2 s each are 2 s apart, so seam windows and the
# windows between them alternate second by second (a 1-s radius would leave no time away from a seam)
SEAM_RADIUS_S = 0.5


def seam_windows(seams: list[float], duration: float, radius: float) -> tuple[list[tuple[float, float]],
                                                                              list[tuple[float, float]]]:
    """(windows centred on the seams, windows of the same length tiling the rest of the clip)."""
    at = [(s - radius, s + radius) for s in seams]
    rest, t = [], 0.0
    for a, b in sorted(at) + [(duration, duration)]:
        while t + 2 * radius <= a + 1e-9:
            rest.append((t, t + 2 * radius))
            t += 2 * radius
        t = max(t, b)
    return at, rest


def seam_record(record: dict, seams: list[float], tol_s: float, radius: float = SEAM_RADIUS_S) -> dict:
    """The seam figures of one analysed clip (`analyse(...).record`): count agreement [agreeing, windows]
    near seams and elsewhere, and the median |picture - sound| onset offset (ms) of events near / away
    from a seam (NaN when there is none)."""
    video = np.asarray(record.get("video_onsets_s", []), float)
    audio = np.asarray(record.get("audio_onsets_s", []), float)
    near, away = seam_windows(seams, float(record["duration_s"]), radius)

    def agreement(windows):
        same = sum(int(((video >= a) & (video < b)).sum() == ((audio >= a) & (audio < b)).sum()) for a, b in windows)
        return [same, len(windows)]

    m = match_onsets(video, audio, tol_s)
    offsets = {True: [], False: []}
    for (i, _), err in zip(m.pairs, m.errors_s):
        close = any(abs(video[i] - s) <= radius for s in seams)
        offsets[close].append(1e3 * abs(float(err)))

    def median(v):
        return float(np.median(v)) if v else math.nan

    return {"seams_s": list(seams), "seam_count_counts": agreement(near), "elsewhere_count_counts": agreement(away),
            "seam_event_offset_ms": median(offsets[True]), "elsewhere_event_offset_ms": median(offsets[False])}


__all__ = ["SEAM_RADIUS_S", "seam_record", "seam_windows"]
