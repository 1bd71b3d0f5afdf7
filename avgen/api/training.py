"""Training as `avgen train` runs it: the loop (`avgen.train`) with two callbacks that need the model's
pipeline and the evaluation suite, which training itself never imports:

- `SampleClips` (every `sample_every` steps): clips from the EMA weights for the first training prompts,
  written as mp4 + PNG sheet, and scored as the suite scores any clip (onset F1, |AV offset|, event
  counts, and with the digit judges how often each modality says the prompt);
- `Validation` (every `val_every` steps): the EMA weights' held-out denoising error per noise level
  (`avgen.eval.denoise`), so a run that starts to memorise its training recordings shows it.
"""
from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import numpy as np
import torch

from avgen.data.clip import Clip
from avgen.data.io import write_mp4
from avgen.data.preview import render_sheet
from avgen.eval.denoise import denoise_error, flat
from avgen.eval.judges import Judges
from avgen.eval.suite import POOLED, EvalConfig, analyse, summarise
from avgen.model.batch import clip_batch
from avgen.model.device import autocast
from avgen.model.pipeline import AVGenPipeline
from avgen.signal.onsets import AVSignal
from avgen.train import loop
from avgen.train.data import build_dataset
from avgen.train.state import Trainer
from avgen.util import one_line


class SampleClips:
    """Sample clips from the EMA weights -> mp4, PNG sheet and the suite's quick figures."""

    name = "samples"

    def every(self, cfg) -> int:
        return cfg.sample_every

    def start(self, trainer: Trainer, ds, run_dir: Path, data_root, log) -> bool:
        # the first training prompts: fixed across a run, so sample sheets are comparable
        self.prompts = [ds[i].prompt for i in range(trainer.cfg.num_samples)]
        self.judges = digit_judges(ds, log)
        self.run_dir = run_dir
        return True

    def __call__(self, trainer: Trainer, step: int) -> dict:
        cfg = trainer.cfg
        net = trainer.ema.copy_to(copy.deepcopy(trainer.model)).eval()
        pipe = AVGenPipeline.from_transformer(net)
        pipe.set_progress_bar_config(disable=True)
        generators = [torch.Generator().manual_seed(cfg.seed + i) for i in range(len(self.prompts))]
        out = pipe(self.prompts, num_inference_steps=cfg.sample_steps, generator=generators)
        folder = self.run_dir / "samples" / f"step-{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        clips = [Clip(out.frames[i], out.audio[i], out.fps, out.sample_rate, prompt=p)
                 for i, p in enumerate(self.prompts)]
        for i, clip in enumerate(clips):
            stem = folder / f"{i:02d}_{clip.prompt.replace(' ', '-') or 'null'}"
            write_mp4(clip, stem.with_suffix(".mp4"))
            render_sheet(clip, stem.with_suffix(".png"))
        return {"samples": str(folder.relative_to(self.run_dir)), **quick_eval_figures(clips, self.judges)}


class Validation:
    """The EMA weights' denoising error on the first `val_clips` test-split clips of the run's data seed,
    computed as the training step computes (bf16 autocast on CUDA when the run uses it, so on a GPU the
    figures are bf16's, not those of `avgen eval --denoise-error`, which runs in fp32)."""

    name = "val"

    def every(self, cfg) -> int:
        return cfg.val_every

    def start(self, trainer: Trainer, ds, run_dir: Path, data_root, log) -> bool:
        cfg, model = trainer.cfg, trainer.model
        try:
            test = build_dataset(cfg, data_root, split="test")
            clips = [test[i] for i in range(min(cfg.val_clips, len(test)))]
            if model.config.get("timeline_cond") and not any(c.events for c in clips):
                raise ValueError(f"the {cfg.dataset} test clips carry no events for the timeline input")
            self.batch = clip_batch(clips, model.config.vocab, model.config.max_events, cfg.codec.frames_per_token,
                                    test.parse_prompt)
        except (ValueError, OSError) as e:
            log(f"val_every: no validation ({one_line(str(e) or type(e).__name__)})")
            return False
        return True

    def __call__(self, trainer: Trainer, step: int) -> dict:
        net = trainer.ema.copy_to(copy.deepcopy(trainer.model)).eval()
        with autocast(trainer.rt.device) if trainer.cfg.bf16 else contextlib.nullcontext():
            errors = denoise_error(net, trainer.codec, self.batch, seed=trainer.cfg.seed)
        return flat(errors, "val_x0")


def quick_eval_figures(clips, judges=None) -> dict:
    """The evaluation suite's per-clip analysis of sample clips (decoded pixels and samples only, no
    ground truth): video vs audio onsets matched within one frame (F1, mean over clips), the median
    |AV offset|, the share of clips whose event counts in both modalities equal the prompt's label
    count, and with the digit judges, how often each modality shows / says the prompt."""
    cfg = EvalConfig(av_align=False, n_boot=100)  # AV-Align is slow and not a sync figure we act on
    records = [analyse(AVSignal.from_clip(c), cfg, judges, prompt=c.prompt).record for c in clips]
    counts_ok = [len(r["video_onsets_s"]) == len(r["audio_onsets_s"]) == len(r["prompt"].split()) for r in records]
    summary = summarise(records, cfg)
    figures = {"av_onset_f1": summary.get("onset_f1", {}).get("mean", math.nan),
               "abs_av_offset_ms": summary.get("median_abs_offset_ms", {}).get("value", math.nan),
               "event_count_ok": float(np.mean(counts_ok))}
    figures.update({name: summary[name]["value"] for name in POOLED if name in summary})
    return figures


def digit_judges(ds, log):
    """The evaluation suite's digit judges when the dataset speaks digits and they are trained."""
    if not set(ds.vocab) <= set("0123456789"):
        return None
    try:
        return Judges.load()
    except FileNotFoundError as e:
        log(f"samples: no digit judges ({e}); sample figures without digit accuracy")
        return None


def callbacks() -> tuple:
    """What `avgen train` runs beside the loop (each only when its period in the config is > 0)."""
    return Validation(), SampleClips()


def train(cfg, run_dir, **kwargs) -> loop.TrainResult:
    """`avgen.train.train` with the sample clips and validation of `callbacks()`."""
    return loop.train(cfg, run_dir, callbacks=callbacks(), **kwargs)


__all__ = ["SampleClips", "Validation", "callbacks", "digit_judges", "quick_eval_figures", "train"]
