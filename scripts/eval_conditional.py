"""Audio-to-video and video-to-audio from REAL test clips, evaluated like any other files.

For each of N Talking Digits (or shapes) test clips, the model is given the clip's real audio (A2V)
or real video (V2A), with the clip's prompt or with the null prompt (`--no-prompt`: the model must
follow the given modality alone), generates the other modality, and the result is written as mp4
with a {file: prompt} manifest. Then `avgen eval DIR --prompts manifest.json` measures it: digit
accuracy of the generated modality against the prompt, and onset F1 / offset against the given one.

    python scripts/eval_conditional.py --weights weights/avgen --mode a2v --n 100 --out runs/a2v
    avgen eval runs/a2v --prompts runs/a2v/manifest.json --json runs/a2v/eval.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv=None) -> int:
    from avgen.data import make_dataset
    from avgen.data.io import write_mp4
    from avgen.model.pipeline import GenerateSettings, generate, load_pipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--mode", choices=["a2v", "v2a"], required=True)
    p.add_argument("--dataset", default="talking-digits")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--no-prompt", action="store_true", help="condition on the given modality only")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.weights, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    ds = make_dataset(args.dataset, split="test", seed=0, spec=pipe.codec.spec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for k in range(args.n):
        real = ds[k]
        given = {"audio": real.audio} if args.mode == "a2v" else {"video": real.frames}
        settings = GenerateSettings(prompt="" if args.no_prompt else real.prompt, seed=k, steps=args.steps,
                                    mode=args.mode)
        clip = generate(pipe, settings, **given)[0]
        name = f"{args.mode}_{k:05d}.mp4"
        write_mp4(clip, out / name)
        manifest[name] = real.prompt  # scored against what the given modality really says
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {args.n} clips and manifest.json to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
