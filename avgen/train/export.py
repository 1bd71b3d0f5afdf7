"""Run folder -> weights folder: what `avgen generate --weights DIR` and
`AVGenPipeline.from_pretrained(DIR)` load, offline.

    DIR/model_index.json                 the pipeline's components (diffusers)
    DIR/transformer/config.json          network size + clip spec + codec config + vocab
    DIR/transformer/diffusion_pytorch_model.safetensors   the EMA weights
    DIR/scheduler/, DIR/audio_scheduler/ flow-matching scheduler configs (one per modality)
    DIR/training_config.json             the resolved TrainConfig of the run
    DIR/export.json                      provenance: run, checkpoint, step, dtype, fp16 error

The EMA weights are exported, not the raw ones. fp16 halves the folder; it is allowed only when
the network's outputs with fp16-rounded weights stay within `fp16_tolerance` of the fp32 ones
(measured here on seeded inputs at several noise levels; the figure goes into export.json).
Weights load back as fp32 whatever the stored dtype.
"""
from __future__ import annotations

import copy
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from avgen.model.codec import AVCodec
from avgen.model.objective import encode_prompts
from avgen.model.pipeline import AVGenPipeline
from avgen.model.transformer import AVDiT
from avgen.train.checkpoint import CheckpointError, latest_checkpoint, load_ema_weights
from avgen.train.config import EXPORT_DTYPES, FP16_TOLERANCE
from avgen.util import package_versions, sha256_file, write_json

DTYPES = {name: getattr(torch, name) for name in EXPORT_DTYPES}


@dataclass
class ExportReport:
    out: Path
    checkpoint: Path
    step: int
    dtype: str
    parameters: int
    fp16_max_abs_diff: float | None  # max |x0(fp16 weights) - x0(fp32 weights)|, when measured


def model_from_checkpoint(path) -> tuple[AVDiT, dict]:
    """The EMA network of a training checkpoint, in fp32, plus the checkpoint's metadata."""
    state, meta = load_ema_weights(path)
    model = AVDiT.from_config(meta["model_config"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: EMA weights do not fit the stored model config: {e}") from e
    return model.eval(), meta


@torch.no_grad()
def fp16_output_error(model: AVDiT, seed: int = 0, batch: int = 4) -> float:
    """Max abs difference of x0 predictions between fp32 weights and the same weights rounded to fp16.

    Seeded Gaussian tokens at noise levels spread over (0, 1), random prompts from the vocabulary,
    computed in fp32 both times, so only the weight rounding is measured.
    """
    codec = AVCodec.from_config(model.config)
    n, dims = codec.num_tokens(), codec.dims
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(batch, n, dims[m], generator=g) for m in ("video", "audio")}
    t = {m: torch.linspace(0.05, 0.95, batch)[torch.randperm(batch, generator=g)] for m in ("video", "audio")}
    vocab, max_events = list(model.config.vocab), model.config.max_events
    picks = torch.randint(max(len(vocab), 1), (batch, max_events), generator=g).tolist()
    prompts = [[vocab[i] for i in row[: 1 + b % max_events]] if vocab else [] for b, row in enumerate(picks)]
    ids, mask = encode_prompts(prompts, vocab, max_events)
    rounded = copy.deepcopy(model).half().float()

    def run(net):
        return net(x["video"], x["audio"], t["video"], t["audio"], ids, mask)

    ref, out = run(model), run(rounded)
    return max(float((ref[m] - out[m]).abs().max()) for m in ref)


def _resolve_checkpoint(run_dir: Path, checkpoint) -> Path:
    if checkpoint is not None:
        return Path(checkpoint)
    found = latest_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint to export (is it a training run folder?)")
    return found


def _replace_folder(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished `tmp` folder to `out`, so a reader never finds half an export."""
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass --force to replace it")
        shutil.rmtree(out)
    os.replace(tmp, out)


def export_run(run_dir, out, *, checkpoint=None, dtype: str = "float32", fp16_tolerance: float = FP16_TOLERANCE,
               sampler: str = "euler", overwrite: bool = False) -> ExportReport:
    """Export a run's EMA weights (newest checkpoint unless `checkpoint` names one) to a weights folder."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    path = _resolve_checkpoint(run_dir, checkpoint)
    model, meta = model_from_checkpoint(path)
    diff = None
    if dtype == "float16":
        diff = fp16_output_error(model)
        if not diff <= fp16_tolerance:
            raise ValueError(f"fp16 weights change the outputs by up to {diff:.3g} (> {fp16_tolerance:g}); "
                             "export as float32")
    report = ExportReport(out, path, int(meta["progress"]["step"]), dtype,
                          sum(p.numel() for p in model.parameters()), diff)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # nn.Module.to, not ModelMixin.to: the latter warns about fp32-only modules, and AVDiT has none
    pipe = AVGenPipeline.from_transformer(torch.nn.Module.to(model, DTYPES[dtype]), sampler)
    pipe.save_pretrained(tmp, safe_serialization=True)
    write_json(tmp / "training_config.json", meta["train_config"], sort_keys=True)
    # where it came from, by name and hash: the run folder's name and the checkpoint's file name, not
    # the paths of the machine that exported it
    provenance = {**asdict(report), "out": out.name, "run": run_dir.resolve().name, "checkpoint": path.name,
                  "checkpoint_sha256": sha256_file(path), "versions": package_versions()}
    write_json(tmp / "export.json", provenance)
    out.parent.mkdir(parents=True, exist_ok=True)
    _replace_folder(tmp, out, overwrite)
    return report


__all__ = ["DTYPES", "FP16_TOLERANCE", "ExportReport", "export_run", "fp16_output_error", "model_from_checkpoint"]
