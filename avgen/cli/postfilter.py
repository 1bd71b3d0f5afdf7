"""`avgen postfilter --weights DIR`: fit the spectral-detail postfilter for a weights folder (thin layer
over `avgen.api.postfilter.fit_postfilter`) and store it as DIR/postfilter, where `load_pipeline`, and
so `avgen generate`, `avgen eval --generate` and the demo, pick it up.

    avgen postfilter --weights weights/avgen              # 160 + 160 clips, a few minutes on a CPU
    avgen postfilter --weights weights/avgen --width 3 --strength 2.5 --force   # how the shipped one was fitted
    avgen postfilter --weights weights/avgen --show       # print the stored gains and how they were fitted
    avgen postfilter --weights weights/avgen --set-strength 2   # apply 1 + 2 (gain - 1): keep the fit, change the dose

It compares real training clips with clips these weights generate (seeds 1000 and up by default, away
from the evaluation's seeds 0-499 and every screen), in the codec's audio features.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from avgen.cli.args import SEED, UsageError, number, whole
from avgen.model.config import DEFAULT_WEIGHTS, PostfilterConfig
from avgen.util import dumps

# Heavy modules (torch, diffusers, gradio) are imported inside the functions that run the command,
# so that building the parser (`avgen --help`) stays fast.


def odd(text: str) -> int:
    """argparse type: an odd whole number in [1, 63], a centred moving average's width in bins."""
    value = whole(1, 63)(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is even; a centred moving average needs an odd width")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser("postfilter", help="fit the audio postfilter of a weights folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="weights folder (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="folder to write (default: WEIGHTS/postfilter)")
    p.add_argument("--n", type=whole(2, 10_000), default=160, help="real and generated clips (default: %(default)s)")
    p.add_argument("--seed", type=SEED, default=1000, help="clip i is generated from seed SEED + i (default: %(default)s)")
    p.add_argument("--batch", type=whole(1, 256), default=8, help="clips generated together (default: %(default)s)")
    p.add_argument("--data-root", default=None, help="folder holding fsdd/ and mnist/")
    p.add_argument("--device", default="auto")
    p.add_argument("--strength", type=number(0.0, 10.0), default=PostfilterConfig.strength,
                   help="store this strength: the filter applies 1 + STRENGTH * (fitted gain - 1) (default: %(default)s, "
                   "the variance matched in the model's features; Griffin-Lim smooths some of it away again, and the "
                   "shipped weights use 2.5, chosen on held-out clips: docs/experiments.md)")
    p.add_argument("--width", type=odd, default=PostfilterConfig.width,
                   help="bins of the moving average along frequency that defines each frame's envelope; the detail "
                   "around it is what the filter scales (default: %(default)s)")
    p.add_argument("--smooth", type=odd, default=PostfilterConfig.smooth,
                   help="bins the fitted gains are averaged over (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing postfilter")
    p.add_argument("--set-strength", type=number(0.0, 10.0), default=None, metavar="S",
                   help="change the stored postfilter's strength to S, keeping its fitted gains")
    p.add_argument("--show", action="store_true", help="print the stored postfilter instead of fitting one")
    p.set_defaults(func=run)


def run(args) -> int:
    from avgen.api.postfilter import fit_postfilter
    from avgen.model.pipeline import load_pipeline
    from avgen.model.postfilter import FOLDER, PostfilterError, SpectralPostfilter

    out = args.out or args.weights / FOLDER
    if args.show or args.set_strength is not None:
        if args.show and args.set_strength is not None:
            raise UsageError("give --show or --set-strength, not both")
        if not out.is_dir():
            raise UsageError(f"{out}: no postfilter here; fit one with `avgen postfilter --weights {args.weights}`")
        post = SpectralPostfilter.load(out)
        if args.set_strength is not None:
            post.with_strength(args.set_strength).save(out)
            print(f"{out}: strength {post.cfg.strength:g} -> {args.set_strength:g}")
            return 0
        print(dumps({"folder": str(out), "bins": post.bins, "width": post.cfg.width, "smooth": post.cfg.smooth,
                          "strength": post.cfg.strength, **post.cfg.fit}))
        return 0
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if args.seed + args.n - 1 >= 2 ** 63:
        raise UsageError(f"--seed {args.seed} leaves no room for {args.n} clips (clip i uses seed + i)")
    pipe = load_pipeline(args.weights, args.device, postfilter=False)  # a broken old one must not stop a refit
    pipe.set_progress_bar_config(disable=True)
    cfg = PostfilterConfig(width=args.width, smooth=args.smooth)  # strength 1: valid for any fitted gains
    post = fit_postfilter(pipe, args.n, args.seed, args.batch, args.data_root, cfg)
    try:
        post = post.with_strength(args.strength)
    except PostfilterError as e:  # e.g. gains below 1 at a high strength: keep the fit, say what to do
        post.save(out)
        raise UsageError(f"{e}; the fit is stored at strength 1 in {out} (change it with --set-strength)") from None
    post.save(out)
    fit = post.cfg.fit
    print(f"{out}: fitted gains per band {fit['gains']} (real / generated detail variance "
          f"{fit['variance_ratio_real_over_generated']}), strength {post.cfg.strength:g}")
    return 0
