"""`avgen distill --weights weights/avgen --out RUN`: a one- or two-pass student of a weights folder
(`avgen.train.distill`), one command from the teacher's trajectories to the installed student."""
from __future__ import annotations

import json

from avgen.cli.args import UsageError, number

# Heavy modules (torch, diffusers, gradio) are imported inside the functions that run the command,
# so that building the parser (`avgen --help`) stays fast.


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def register(sub) -> None:
    p = sub.add_parser("distill", help="distil a weights folder into a one- or two-pass student (the fast sampler)",
                       description="Run the teacher (25 guided Euler steps) on prompts of the training data, keep its "
                       "trajectories, and train a low-rank adapter that follows them in one or two passes. Resumable: "
                       "run the same command with --resume after a stop.")
    p.add_argument("--weights", required=True, help="the teacher's weights folder, e.g. weights/avgen")
    p.add_argument("--out", required=True, help="run folder (teacher trajectories, checkpoints, the student)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--install", action="store_true", help="when done, install the student in --weights as student/")
    p.add_argument("--max-minutes", type=number(0.0, above=True), default=None,
                   help="stop (with a checkpoint) after this long; --resume goes on from there")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a distillation setting (clips, steps, batch_size, lr, rank, levels, griffin_lim_iters, ...)")
    p.add_argument("--data-root", default=None, help="folder holding fsdd/ and mnist/ (default: $AVGEN_DATA, else "
                   "../shared/data)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from avgen.model.weights import check_weights_folder
    from avgen.train.distill import CONFIG_FILE, DistillConfig, distill

    check_weights_folder(args.weights)
    saved = Path(args.out) / CONFIG_FILE
    # a continued run starts from its own settings; --set changes only what is given
    base = DistillConfig.from_dict(json.loads(saved.read_text())) if args.resume and saved.is_file() else DistillConfig()
    cfg = base.override(dict(parse_override(s) for s in args.set))
    try:
        r = distill(args.weights, args.out, cfg, data_root=args.data_root, resume=args.resume,
                    max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
                    into=args.weights if args.install else None)
    except FileExistsError as e:
        raise UsageError(str(e)) from None
    if r.student is None:
        print(f"{r.run_dir}: stopped at step {r.step} of {cfg.steps}; continue with --resume")
    else:
        print(f"{r.student}: the student after {r.step} steps (loss {r.last_loss:.4g})"
              + ("" if args.install else f"; install it with --install, or copy it to {args.weights}/student"))
    return 0
