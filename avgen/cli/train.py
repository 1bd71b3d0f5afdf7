"""`avgen train`: train (or continue) a run; a thin layer over `avgen.api.training.train` (the loop, with
sample clips and held-out validation as callbacks).

    avgen train --preset shapes-cpu --out runs/shapes            # dataset from the preset
    avgen train --dataset talking-digits --preset digits-cpu --out runs/digits --set lr=2e-4
    avgen train --out runs/digits --resume --steps 40000          # continue, with a longer goal
    avgen train --out runs/digits --resume --workers 12 --max-minutes 5   # a GPU's data, a time box
    avgen train --out runs/digits --resume --workers 12 --compile --set noise_on_device=true   # a GPU, fed
    torchrun --nproc_per_node 2 $(which avgen) train ...          # several processes (DDP)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avgen.cli.args import UsageError, number, whole
from avgen.model.config import DEVICES
from avgen.train.config import TRAIN_PRESETS, preset

# Heavy modules (torch, diffusers, gradio) are imported inside the functions that run the command,
# so that building the parser (`avgen --help`) stays fast.


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a joint audio-video model",
                              description="Train the joint audio-video model. The resolved config, checkpoints, "
                              "metrics.jsonl and sample clips go to the run folder (--out).",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--preset", choices=list(TRAIN_PRESETS),
                   help="named training config (required for a new run; on --resume the run's saved config is "
                   "used unless this is given)")
    p.add_argument("--dataset", default=None, help="talking-digits, shapes or folder:PATH (default: the preset's)")
    p.add_argument("--steps", type=whole(1, 10 ** 9), default=None, help="train until this many optimizer steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--init-from", default=None, metavar="WEIGHTS_DIR",
                   help="fine-tune from exported weights (their size, codec and clip spec are kept)")
    p.add_argument("--grow-depth", type=whole(1, 64), default=None, metavar="N",
                   help="with --init-from: append blocks to the pretrained model up to N (each new block starts "
                   "as the identity, so training starts from exactly what the pretrained model computes)")
    p.add_argument("--data-root", default=None, help="folder holding fsdd/ and mnist/ (default: $AVGEN_DATA, "
                   "else ../shared/data)")
    p.add_argument("--device", default="auto", choices=[d for d in DEVICES if d != "mps"],
                   help="auto = CUDA when present, else CPU")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. lr=3e-4, objective.p_drop_prompt=0.2, model=AVDiT-B "
                   "(repeatable; unknown keys are errors)")
    p.add_argument("--workers", type=whole(0, 256), default=0,
                   help="data worker processes that build batches ahead of the step (0 = in this process; the "
                   "run's result is the same either way). On a GPU the model outruns one process's data")
    p.add_argument("--max-minutes", type=number(0.0, above=True), default=None, metavar="M",
                   help="stop after M minutes of training with a checkpoint; --resume goes on from there")
    p.add_argument("--compile", action="store_true",
                   help="run the training step's network through torch.compile (fused kernels: for a GPU, where a "
                   "small model is launch-bound; the first step pays the compilation)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.set_defaults(func=run)


def resolve_config(args):
    """The config this invocation trains with: a preset + overrides, or the resumed run's own."""
    from avgen.train.record import read_run_config

    if args.preset is not None:
        cfg = preset(args.preset)
    elif args.resume:
        cfg = read_run_config(args.out)
    else:
        raise UsageError("choose a training config with --preset (e.g. tiny, shapes-cpu, digits-cpu)")
    if args.dataset is not None:
        cfg = cfg.override({"dataset": args.dataset})
    cfg = cfg.override(args.overrides)
    if args.steps is not None:
        cfg = cfg.override({"steps": args.steps})
    return cfg


def run(args) -> int:
    from avgen.api.training import train
    from avgen.model.weights import check_weights_folder

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file; a run is a folder")
    if args.init_from is not None:
        check_weights_folder(args.init_from)  # before the run folder is made
    elif args.grow_depth is not None:
        raise UsageError("--grow-depth grows a pretrained model: give it with --init-from WEIGHTS_DIR")
    cfg = resolve_config(args)
    result = train(cfg, args.out, resume=args.resume, init_from=args.init_from, device=args.device,
                   data_root=args.data_root, progress_bar=not args.no_progress, workers=args.workers,
                   max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes,
                   grow_depth=args.grow_depth, compiled=args.compile)
    if result.rank == 0 and result.checkpoint is not None:
        print(f"step {result.step}: {result.checkpoint}"
              + (f" ({result.skipped_steps} non-finite steps skipped)" if result.skipped_steps else ""),
              file=sys.stderr)
    return 0
