"""What a training step trains on: the order of samples, batches built (in this process or in data
workers) and moved to the device, and the loss's random draws made ahead.

Determinism (EDM2's rule): a run's result is a function of its config alone.
- Data: step s of a run with global batch B trains on global sample indices [position, position + B),
  where position = s * B unless the batch size changed on resume; sample g is clip `order(g)` of the
  dataset, a pure function of (data seed, g).
- Randomness: sample g's noise, noise levels and dropouts come from its own generator seeded by
  (run seed, g) (`avgen.model.batch.sample_generator`), never from global RNG state.
- Data workers (`workers > 0`, `avgen train --workers N`): batches are built, and the loss's random
  draws made (all but the noise under `noise_on_device`), in N worker processes ahead of the step
  that uses them. A batch is a pure function of its position, so the run trains on exactly what it
  trains on without them. Frames travel as uint8 when they are exactly k/255 (a quarter of their
  bytes; unpacked by table lookup on the device, so the step sees the same floats).
- `noise_on_device` (off by default): the loss's noise, two thirds of a batch's bytes, is drawn on the
  training device instead, per global batch from a generator keyed by (run seed, batch position).
  Every rank draws the whole global batch and keeps its slice, so the rules above still hold
  (resume, data workers, processes up to float summation order) on one kind of device; the run no
  longer matches the same run with the noise drawn per sample, on another device, or with another
  batch size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from avgen.data import make_dataset
from avgen.model.batch import clip_slots, sample_generator, seed64
from avgen.model.objective import Draws, ObjectiveConfig, draw_randomness
from avgen.model.transformer import MEDIA
from avgen.train.config import TrainConfig
from avgen.train.runtime import Runtime


class SampleOrder:
    """Global sample index g -> dataset index.

    Event datasets draw every index independently (a pure function of seed and index), so g maps
    to itself (modulo their length). A folder dataset holds a few long files cut into consecutive
    windows, so it is visited in a fresh seeded permutation each epoch: otherwise a batch would be
    neighbouring windows of one file.
    """

    def __init__(self, length: int, seed: int, shuffle: bool):
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self._epoch, self._perm = -1, None

    def __call__(self, g: int) -> int:
        if not self.shuffle:
            return g % self.length
        epoch = g // self.length
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.length)
        return int(self._perm[g % self.length])



FRAME_LEVELS = torch.from_numpy(np.arange(256, dtype=np.float32) / np.float32(255))  # uint8 k -> k / 255


def pack_frames(frames: np.ndarray) -> torch.Tensor:
    """Frames as uint8 when every value is exactly k / 255 (rendered digits, decoded video), else
    as they are: a quarter of the bytes between a data worker and the device, and no change (-0.0
    aside, which comes back as 0.0). About 0.05 ms per clip on one core."""
    if frames.dtype == np.float32:
        packed = (frames * np.float32(255) + np.float32(0.5)).astype(np.uint8)  # out-of-range values wrap ..
        if np.array_equal(packed.astype(np.float32) / np.float32(255), frames):  # .. and fail this test
            return torch.from_numpy(packed)
    return torch.from_numpy(frames)


def unpack_frames(frames: torch.Tensor) -> torch.Tensor:
    """The float frames `pack_frames` was given, on frames' device (a table lookup: exact anywhere)."""
    if frames.dtype != torch.uint8:
        return frames
    table = FRAME_LEVELS.to(frames.device)
    return table.index_select(0, frames.reshape(-1).int()).view(frames.shape)


@dataclass
class Batch:
    frames: torch.Tensor  # (b, T, H, W, C): float in [0, 1], or uint8 (pack_frames); unpack_frames reads both
    audio: torch.Tensor  # (b, S)
    labels: list[list[str]]  # prompt labels per sample
    generators: list[torch.Generator]  # one per sample, keyed by its global index
    slots: torch.Tensor | None = None  # (b, N) timeline slot ids on the token clock, -1 = not known
    draws: Draws | None = None  # the loss's draws, made from `generators` ahead of the step (or None)
    indices: range | None = None  # the global sample indices of these clips (keys the device noise)

    def pin_memory(self) -> "Batch":  # DataLoader(pin_memory=True) calls this on custom batch types
        pin = lambda x: None if x is None else x.pin_memory()  # noqa: E731
        return dataclasses.replace(self, frames=self.frames.pin_memory(), audio=self.audio.pin_memory(),
                                   slots=pin(self.slots), draws=pin(self.draws))

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"  # from pinned memory the copies overlap the previous step's kernels
        move = lambda x: None if x is None else x.to(device, non_blocking=nb)  # noqa: E731
        return dataclasses.replace(self, frames=move(self.frames), audio=move(self.audio), slots=move(self.slots),
                                   draws=move(self.draws))


@dataclass(frozen=True)
class DrawSpec:
    """What a data worker needs to make a batch's loss draws: the objective and the token shapes."""

    objective: ObjectiveConfig
    frames_per_token: int
    dims: dict[str, int]  # token width per modality (the codec's)
    timeline: bool  # the model has the timeline input (one more dropout draw per sample)
    noise: bool = True  # False: the noise is left to the training device (TrainConfig.noise_on_device)

    def token_shapes(self, num_frames: int) -> dict[str, tuple[int, int]]:
        return {m: (num_frames // self.frames_per_token, self.dims[m]) for m in MEDIA}

    def draws(self, generators: list[torch.Generator], num_frames: int) -> Draws:
        return draw_randomness(generators, len(generators), self.token_shapes(num_frames), self.objective,
                               timeline=self.timeline, noise=self.noise)


def device_noise(seed: int, indices: range, rt: "Runtime", shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """{m: (b, N, D_m)} noise of this rank's slice `indices` of a global batch, drawn on the runtime's
    device. Every rank draws the whole global batch from one generator keyed by its start and keeps its
    slice, so the noise of a sample does not depend on the number of processes."""
    local = len(indices)
    start, world = indices.start - rt.rank * local, local * rt.world_size
    g = torch.Generator(rt.device).manual_seed(seed64(seed, start, 0x6E6F697365))  # its own stream: "noise"
    mine = slice(rt.rank * local, (rt.rank + 1) * local)
    return {m: torch.randn((world, *shapes[m]), generator=g, device=rt.device)[mine] for m in MEDIA}


def local_indices(position: int, batch_size: int, rt: Runtime) -> range:
    """This rank's contiguous slice of the global batch [position, position + batch_size)."""
    local = batch_size // rt.world_size
    start = position + rt.rank * local
    return range(start, start + local)


def load_batch(ds, order: SampleOrder, indices: range, seed: int, device: torch.device,
               frames_per_token: int, draw_spec: DrawSpec | None = None) -> Batch:
    """The clips at global positions `indices` with each sample's generator, or, with `draw_spec`,
    with the loss's draws already made from those generators (and no generators left to draw from)."""
    clips = [ds[order(g)] for g in indices]
    frames = pack_frames(np.stack([c.frames for c in clips]))  # (b, T, H, W, C)
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))  # (b, S)
    generators, draws = [sample_generator(seed, g) for g in indices], None
    if draw_spec is not None:
        generators, draws = [], draw_spec.draws(generators, frames.shape[1])
    batch = Batch(frames, audio, [ds.parse_prompt(c.prompt) for c in clips], generators,
                  clip_slots(clips, frames_per_token), draws, indices)
    return batch.to(device)


class BatchSource(torch.utils.data.Dataset):
    """Batch k of a run from position `start`: what `load_batch` returns for that slice, drawn
    complete (clips and loss draws) in a DataLoader worker."""

    def __init__(self, ds, order: SampleOrder, start: int, batch_size: int, rt: "Runtime", seed: int,
                 draw_spec: DrawSpec):
        self.ds, self.order, self.start, self.batch_size = ds, order, start, batch_size
        self.rank_rt, self.seed, self.draw_spec = Runtime(torch.device("cpu"), rt.rank, rt.world_size), seed, draw_spec

    def __len__(self) -> int:
        return 2 ** 62  # endless: the loop stops asking

    def __getitem__(self, k: int) -> Batch:
        indices = local_indices(self.start + k * self.batch_size, self.batch_size, self.rank_rt)
        return load_batch(self.ds, self.order, indices, self.seed, torch.device("cpu"), self.draw_spec.frames_per_token,
                          self.draw_spec)


def batches(ds, order: SampleOrder, start: int, cfg: TrainConfig, rt: "Runtime", draw_spec: DrawSpec,
            workers: int):
    """Endless batches of a run from data position `start`, on the runtime's device. With workers = 0
    they are built in this process one at a time; else `workers` processes build them ahead (a few
    batches each) in order, so the result is the same."""
    source = BatchSource(ds, order, start, cfg.batch_size, rt, cfg.seed, draw_spec)
    if workers == 0:
        k = 0
        while True:
            yield source[k].to(rt.device)
            k += 1
    loader = torch.utils.data.DataLoader(source, batch_size=None, shuffle=False, num_workers=workers,
                                         pin_memory=rt.device.type == "cuda", prefetch_factor=2,
                                         persistent_workers=False)
    for batch in loader:
        yield batch.to(rt.device)



def build_dataset(cfg: TrainConfig, data_root=None, split: str = "train"):
    """The run's clips; augmentation (talking-digits only) applies to the train split alone."""
    augment = {}
    if split == "train" and (cfg.augment_speed or cfg.augment_shift_px):
        if cfg.dataset != "talking-digits":
            raise ValueError(f"augment_speed / augment_shift_px apply to talking-digits, not {cfg.dataset}")
        augment = {"augment_speed": cfg.augment_speed, "augment_shift_px": cfg.augment_shift_px}
    if cfg.dataset.startswith("folder:"):
        augment["holdout"] = cfg.holdout  # split by file; which files is recorded in the run (run.json)
    return make_dataset(cfg.dataset, split=split, seed=cfg.data_seed, spec=cfg.spec, data_root=data_root, **augment)


def has_events(ds, num_clips: int = 20) -> bool:
    """Whether the dataset's clips carry ground-truth events (synthetic data does; a folder of clips does not)."""
    return any(ds[i].events for i in range(min(num_clips, len(ds))))



__all__ = ["Batch", "BatchSource", "DrawSpec", "SampleOrder", "batches", "build_dataset", "device_noise",
           "has_events", "load_batch", "local_indices", "pack_frames", "unpack_frames"]
