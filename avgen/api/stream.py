"""A clip as a stream of chunks, each playable as soon as it is made: the library function behind the
studio's streaming player.

The pipeline makes a long clip window by window (`avgen.model.chunks`); here each window's new part is
decoded (picture and sound; Griffin-Lim runs over the whole window, context included, and the new part
is cut from it, so it starts from settled phase; the chunks are joined without a crossfade, at a seam
that falls in the silence between events) and handed out while the next window is sampled on a worker
thread. A reader that stops early (a closed page) stops the worker at its next window.
The first chunk is the first window (the model's clip length), later ones its new tokens.

    for chunk in stream(pipe, GenerateSettings(prompt="3 1 4 1 5", duration=30, sampler="fast")):
        play(chunk.frames, chunk.audio)          # chunk.start_s: where it goes on the clip's clock
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from avgen.api.generate import sampling_kwargs
from avgen.api.settings import GenerateSettings
from avgen.data.clip import Clip
from avgen.model.pipeline import AVGenPipeline


@dataclass
class StreamChunk:
    index: int
    start_s: float  # on the clip's clock
    frames: np.ndarray  # (T, H, W, C) float32 in [0, 1]
    audio: np.ndarray  # (S,) float32
    fps: int
    sample_rate: int
    made_s: float  # seconds from the call to this chunk being ready

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps


def stream(pipe: AVGenPipeline, settings: GenerateSettings) -> Iterator[StreamChunk]:
    """Chunks of the clip `settings` describe (one clip: `num_clips` must be 1; text to AV), in order."""
    settings = settings.check()
    if settings.num_clips != 1 or settings.mode != "t2av":
        raise ValueError("a stream is one clip made from a prompt (mode t2av, num_clips 1)")
    prompt = pipe.vocabulary_for(settings.duration).parse(settings.prompt)
    pipe.set_sampler(settings.sampler)
    fpt = pipe.codec.cfg.frames_per_token
    spf = pipe.codec.spec.samples_per_frame
    began = time.perf_counter()
    ready: queue.Queue = queue.Queue()
    done = object()
    cancel = threading.Event()  # the reader went away (a closed page, a stopping studio): stop at the next window

    def on_window(b, w, x):
        if cancel.is_set():
            raise _Cancelled
        tokens = {m: x[m][b:b + 1, w.start:w.end] for m in ("video", "audio")}
        frames, waves = pipe.decode(tokens, {}, None, None, "np", settings.postfilter, pipe.decode_iters)
        skip = (w.new_from - w.start) * fpt
        ready.put((w.new_from * fpt, frames[0, skip:], waves[0, skip * spf:]))

    def work():
        try:
            with torch.no_grad():
                pipe(prompt, generator=torch.Generator("cpu").manual_seed(settings.seed), output_type="latent",
                     on_window=on_window, **sampling_kwargs(settings))
            ready.put(done)
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 (handed to the reader, which raises it)
            ready.put(e)

    thread = threading.Thread(target=work, name="avgen-stream", daemon=True)
    thread.start()
    index = 0
    try:
        while True:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            if item is done:
                break
            yield _chunk(pipe, index, item, began)
            index += 1
    finally:  # however the reader leaves, the worker is done with the pipeline before the caller goes on
        cancel.set()
        thread.join()


class _Cancelled(Exception):
    """Raised inside the worker's sampling when the reader has gone."""


def _chunk(pipe, index, item, began) -> StreamChunk:
    frame0, frames, audio = item
    spec = pipe.codec.spec
    return StreamChunk(index, frame0 / spec.fps, frames.astype(np.float32), audio.astype(np.float32), spec.fps,
                       spec.sample_rate, time.perf_counter() - began)


def as_clip(chunks: list[StreamChunk], prompt: str, meta: dict | None = None) -> Clip:
    """The streamed chunks as one clip (what was played, for the mp4 a person downloads)."""
    first = chunks[0]
    return Clip(np.concatenate([c.frames for c in chunks]), np.concatenate([c.audio for c in chunks]), first.fps,
                first.sample_rate, prompt=prompt, meta=dict(meta or {}))


__all__ = ["StreamChunk", "as_clip", "stream"]
