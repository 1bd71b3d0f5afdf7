"""What a generated clip is saved with: the mp4 (upscaled for viewing) and a JSON sidecar that holds
everything needed to make it again (prompt, seed, every setting, the weights' SHA-256 and postfilter,
the device and package versions, and the timeline the model was given)."""
from __future__ import annotations

from pathlib import Path

from avgen.api.settings import GenerateSettings
from avgen.data.clip import Clip
from avgen.data.io import write_mp4
from avgen.model.pipeline import AVGenPipeline
from avgen.model.weights import weights_file
from avgen.util import output_paths, package_versions, sha256_file, write_json


def weights_record(pipe: AVGenPipeline, weights_dir, settings: GenerateSettings) -> dict:
    """Which weights made a clip: the folder, its network file's SHA-256, and the postfilter that
    decoded the sound (None when off, absent, or the sound was given)."""
    return {"path": str(Path(weights_dir).resolve()), "sha256": sha256_file(weights_file(weights_dir)),
            "postfilter": pipe.postfilter_record(settings.postfilter, settings.mode)}


def sidecar(clip: Clip, settings: GenerateSettings, weights: dict, device: str) -> dict:
    record = {"prompt": clip.prompt, "seed": clip.meta["seed"], "settings": settings.to_dict(), "device": device,
              "weights": weights, "versions": package_versions(), "fps": clip.fps, "sample_rate": clip.sample_rate,
              "num_frames": clip.num_frames}
    if "timeline" in clip.meta:  # the events a timeline model was asked to place: [label, start_s, end_s]
        record["timeline"] = [list(e) for e in clip.meta["timeline"]]
    return record


def write_outputs(clips: list[Clip], out, settings: GenerateSettings, pipe: AVGenPipeline, weights_dir,
                  device: str) -> list[Path]:
    """Each clip as an mp4 plus its JSON sidecar (strict JSON)."""
    weights = weights_record(pipe, weights_dir, settings)
    paths = output_paths(Path(out), len(clips))
    for clip, path in zip(clips, paths):
        write_mp4(clip, path)
        write_json(path.with_suffix(".json"), sidecar(clip, settings, weights, device))
    return paths


__all__ = ["output_paths", "sidecar", "weights_record", "write_outputs"]
