"""The avgen studio as a script (the same as `avgen demo`):

    python demos/app.py [--host 127.0.0.1] [--port 7860] [--weights DIR] [--device auto] [--share]
"""
from __future__ import annotations

import argparse
import sys

import avgen.demo  # noqa: F401  (offline settings before Gradio is imported)
from avgen.cli.demo import add_demo_args
from avgen.demo.app import build_app, launch
from avgen.seeds import DEFAULT_SEEDS_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demos/app.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_args(parser)
    args = parser.parse_args(argv)
    try:  # the weights folder is missing or a flag is wrong: one line, not a traceback
        app = build_app(weights=args.weights, device=args.device, seeds_dir=args.seeds or DEFAULT_SEEDS_DIR)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    launch(app, host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
