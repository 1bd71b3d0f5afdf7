"""`avgen demo`: serve the studio (a Gradio page) with the shipped weights; thin layer over
`avgen.demo.app`. Binds 127.0.0.1 unless --host says otherwise; --share asks Gradio for a public
link (that one reaches the internet)."""
from __future__ import annotations

import argparse

from avgen.cli.args import whole

# Heavy modules (torch, diffusers, gradio) are imported inside the functions that run the command,
# so that building the parser (`avgen --help`) stays fast.


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="serve the studio in the browser", description=__doc__)
    add_demo_args(p)
    p.set_defaults(func=run)


def add_demo_args(p: argparse.ArgumentParser) -> None:
    """The flags `avgen demo` and `demos/app.py` share."""
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 serves the whole network)")
    p.add_argument("--port", type=port_number, default=7860, help="(default: %(default)s)")
    p.add_argument("--weights", default=None, help="weights folder (default: the shipped weights/avgen)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the model runs; the page can switch per request (default: %(default)s)")
    p.add_argument("--seeds", default=None, help="folder of curated presets offered as examples (default: seeds/)")
    p.add_argument("--share", action="store_true", help="also serve through a public Gradio link")


def port_number(text: str) -> int:
    return whole(1, 65535)(text)


def run(args) -> int:
    import avgen.demo  # noqa: F401  (offline settings before Gradio is imported)
    from avgen.demo.app import build_app, launch
    from avgen.seeds import DEFAULT_SEEDS_DIR

    app = build_app(weights=args.weights, device=args.device, seeds_dir=args.seeds or DEFAULT_SEEDS_DIR)
    launch(app, host=args.host, port=args.port, share=args.share)
    return 0
