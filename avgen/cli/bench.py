"""`avgen bench --json OUT.json`: the speed of the denoising loop and of training on this machine."""
from __future__ import annotations

from pathlib import Path

from avgen.util import write_json

# Heavy modules (torch, diffusers, gradio) are imported inside the functions that run the command,
# so that building the parser (`avgen --help`) stays fast.


def cmd_bench(args) -> int:
    from avgen.bench import BENCH_PRESETS, format_table, run_bench
    from avgen.model.weights import check_weights_folder

    if args.preset not in BENCH_PRESETS:
        raise ValueError(f"unknown bench preset {args.preset!r}; choose one of {', '.join(BENCH_PRESETS)}")
    if args.json and Path(args.json).is_dir():
        raise ValueError(f"--json {args.json} is a directory; give a file name")
    if args.weights:
        check_weights_folder(args.weights)  # before minutes of timing the loop
    report = run_bench(BENCH_PRESETS[args.preset], device=args.device, weights=args.weights, captured=args.captured,
                       data_root=args.data_root)
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure the denoising loop and training against this machine's matmul ceiling")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    p.add_argument("--preset", default="default", help="default (the demo's settings) or tiny (a smoke test)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--weights", default=None, help="time these weights instead of a fresh model of the same size")
    p.add_argument("--captured", action="store_true",
                   help="also batch 1 with the network compiled (CUDA: graph capture; CPU: inductor), beside eager")
    p.add_argument("--data-root", default=None,
                   help="folder holding fsdd/ and mnist/ for the training input figures (default: $AVGEN_DATA, "
                        "else ../shared/data; without them the input is timed on the synthetic shapes)")
    p.set_defaults(func=cmd_bench)
