"""Judges for any captioned folder (`avgen judges train --dataset folder:PATH --out DIR`): the picture and
sound event classifiers of the suite (`judges.py`'s networks and inputs), trained on the events derived
from the folder's own train split (`avgen.data.folder`), measured on its held-out files, and refused for
scoring (`Judges.load(min_accuracy=MIN_RELIABLE)`) when they read too few held-out events right.

With them `avgen eval --judges DIR` reads a generated clip's labels in the user's own vocabulary, as the
digit judges read digits: each detected event's mean frame and its sound.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from avgen.eval.judges import (IMAGE, SPEECH, SPEECH_RATE, Judges, augment_images, augment_sound, event_frames,
                               event_sound, fit, image_input, speech_input, tiny)
from avgen.signal.onsets import AVSignal, Detected, resample

MIN_RELIABLE = 0.8  # judges that read fewer held-out events right than this are not used to score


def event_examples(ds) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Every event of the dataset's windows that carry a timeline: (picture inputs (N, 32, 32), sound
    segments at the judges' rate from just before each onset, label ids (N,) in `ds.vocab`)."""
    index = {w: i for i, w in enumerate(ds.vocab)}
    images, sounds, labels = [], [], []
    for i in range(len(ds.windows)):
        clip = ds[i]
        if not clip.events:
            continue
        sig = AVSignal.from_clip(clip)
        for e in clip.events:
            ev = Detected(e.start_s, e.end_s, 0.0)
            images.append(image_input(event_frames(sig.frames, sig.frame_times, sig.fps, ev)))
            sounds.append(resample(event_sound(sig.audio, sig.sample_rate, ev), sig.sample_rate, SPEECH_RATE))
            labels.append(index[e.label])
    return np.stack(images).astype(np.float32) if images else np.zeros((0, 32, 32), np.float32), sounds, \
        np.array(labels, np.int64)


def train_folder_judges(train_ds, test_ds, seed: int = 0, small: bool = False, log=print) -> tuple[Judges, dict]:
    """(judges, report) for the folder whose two splits are given; the report holds each judge's held-out
    accuracy (what `Judges.load(min_accuracy=...)` checks)."""
    images, sounds, y = event_examples(train_ds)
    if not len(y):
        raise ValueError(f"{train_ds.root}: no clip of the train split has a derived timeline, so there is no event "
                         "to train judges on (see `avgen data stats --dataset folder:...`)")
    held = event_examples(test_ds) if test_ds is not None else (np.zeros((0, 32, 32)), [], np.zeros(0, np.int64))
    labels = tuple(train_ds.vocab)
    configs = {"image": replace(IMAGE, labels=labels, seed=seed), "speech": replace(SPEECH, labels=labels, seed=seed)}
    if small:
        configs = {k: replace(tiny(c), epochs=2) for k, c in configs.items()}
    x_img, y_t = torch.from_numpy(images), torch.from_numpy(y)

    def image_batch(idx, step):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return augment_images(x_img[idx], g), y_t[idx]

    def sound_batch(idx, step):
        rng = np.random.default_rng([seed, step])
        return torch.from_numpy(np.stack([speech_input(augment_sound(sounds[i], rng), SPEECH_RATE) for i in idx])), y_t[idx]

    report = {"labels": list(labels), "train_events": int(len(y)), "heldout_events": int(len(held[2])),
              "train_events_per_label": {lab: int((y == k).sum()) for k, lab in enumerate(labels)}}
    judges = {}
    for name, batch in (("image", image_batch), ("speech", sound_batch)):
        log(f"training the {name} judge on {len(y)} events ({configs[name].epochs} epochs)")
        judge, run = fit(configs[name], len(y), batch)
        inputs = list(held[0]) if name == "image" else [speech_input(s, SPEECH_RATE) for s in held[1]]
        accuracy = float(np.mean([int(judge.cfg.labels.index(r) == t) for r, t in
                                  zip(judge(inputs).labels, held[2])])) if len(held[2]) else None
        judge.info = {"trained_on": f"the train split of folder {train_ds.root}", "heldout_accuracy": accuracy,
                      "heldout_events": int(len(held[2])), "train_seconds": round(run.seconds, 1)}
        report[f"{name}_heldout_accuracy"] = accuracy
        judges[name] = judge
    return Judges(judges["image"], judges["speech"]), report


def save_judges(judges: Judges, out) -> Path:
    for judge in (judges.image, judges.speech):
        judge.save(out, judge.info)
    return Path(out)


__all__ = ["MIN_RELIABLE", "event_examples", "save_judges", "train_folder_judges"]
