"""`avgen export RUN_DIR --out weights/NAME`: a run's EMA weights as the folder `--weights` takes."""
from __future__ import annotations

from avgen.cli.args import UsageError, number
from avgen.train.config import EXPORT_DTYPES, FP16_TOLERANCE

# Heavy modules (torch, diffusers, gradio) are imported inside the functions that run the command,
# so that building the parser (`avgen --help`) stays fast.



def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="turn a training run into a weights folder",
                              description="Export the EMA weights of a run's newest (or a named) checkpoint as a "
                              "diffusers pipeline folder that `avgen generate --weights` and "
                              "AVGenPipeline.from_pretrained load offline.")
    p.add_argument("run_dir", help="training run folder (made by `avgen train`)")
    p.add_argument("--out", required=True, help="weights folder to write, e.g. weights/avgen")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the run's newest)")
    p.add_argument("--dtype", default="float32", choices=list(EXPORT_DTYPES),
                   help="stored weight type; float16 only if outputs change by at most --fp16-tolerance")
    p.add_argument("--fp16-tolerance", type=number(0.0), default=FP16_TOLERANCE,
                   help="max abs change of the network's outputs allowed for float16 (default: %(default)g)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from avgen.train.export import export_run

    try:
        r = export_run(args.run_dir, args.out, checkpoint=args.checkpoint, dtype=args.dtype,
                       fp16_tolerance=args.fp16_tolerance, overwrite=args.force)
    except FileExistsError as e:
        raise UsageError(str(e)) from None
    fp16 = f", fp16 max |output change| {r.fp16_max_abs_diff:.2e}" if r.fp16_max_abs_diff is not None else ""
    print(f"{r.out}: step {r.step} EMA weights, {r.parameters / 1e6:.2f}M parameters, {r.dtype}{fp16}")
    print(f"next: `avgen postfilter --weights {r.out}` fits the audio postfilter for these weights (a few minutes)")
    return 0
