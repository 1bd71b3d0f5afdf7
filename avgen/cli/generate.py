"""`avgen generate "3 1 4" --out clip.mp4`: sample clips from trained weights (thin CLI layer over
`avgen.model.pipeline`). `--audio in.wav` makes the picture follow given sound (A2V), `--video in.mp4`
the sound follow a given picture (V2A). Every mp4 gets a JSON sidecar that reproduces it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avgen.cli import SEED, UsageError, add_guidance_interval, add_postfilter_flag, add_timeline_flag, interval_arg, timeline_arg, number, whole

MAX_STEPS, MAX_CLIPS, MAX_DURATION_S, MAX_GUIDANCE = 1000, 100, 60.0, 100.0


def register(subparsers) -> None:
    from avgen.model.device import DEVICES
    from avgen.model.pipeline import DEFAULT_WEIGHTS, SAMPLERS, GenerateSettings

    d = GenerateSettings()
    p = subparsers.add_parser("generate", help="generate video + soundtrack from a prompt",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prompt", nargs="?", default="",
                   help='label sequence, e.g. "3 1 4"; may be empty with --audio/--video (unconditional)')
    p.add_argument("--out", required=True, type=Path, help="output mp4 (several clips: OUT_000.mp4, ...)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="weights folder from `avgen export`")
    scale = number(0.0, MAX_GUIDANCE)
    p.add_argument("--seed", type=SEED, default=d.seed, help="clip i uses seed + i")
    p.add_argument("--steps", type=whole(1, MAX_STEPS), default=d.steps, help="denoising steps")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=d.sampler,
                   help="euler (N network passes for N steps), heun (second order, 2N - 2 passes) or dpm++ "
                        "(second-order multistep, N passes); default %(default)s")
    p.add_argument("--guidance-scale", type=scale, default=d.guidance_scale, help="video prompt guidance")
    p.add_argument("--audio-guidance-scale", type=scale, default=None,
                   help="audio prompt guidance (default: --guidance-scale)")
    p.add_argument("--modality-scale", type=scale, default=d.modality_scale,
                   help="guidance away from the pass without the cross-modal path (1 = off)")
    add_guidance_interval(p)
    add_timeline_flag(p)
    add_postfilter_flag(p)
    p.add_argument("--duration", type=number(0.0, MAX_DURATION_S, above=True), default=None,
                   help="seconds (default: the model's clip length)")
    p.add_argument("--num-clips", type=whole(1, MAX_CLIPS), default=d.num_clips)
    p.add_argument("--device", choices=DEVICES, default=d.device)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network: the first call compiles (about a minute on a 2-core CPU, "
                   "seconds once inductor's cache has it), then each denoising loop runs ~1.2x faster on CPU "
                   "(`avgen bench --captured`); pays for --num-clips runs, not for one clip")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--audio", type=Path, help="audio (wav, or a video file's sound track) to hold fixed: A2V")
    given.add_argument("--video", type=Path, help="video file whose picture is held fixed: V2A")
    p.set_defaults(func=run)


def read_given(args, spec) -> tuple[dict, list[str]]:
    """--audio / --video -> ({audio: (S,)} or {video: (T, H, W, C)} on the model's clock, notes on how the
    file was fitted): the library reader the studio's uploads go through too."""
    from dataclasses import replace

    from avgen.data.io import read_given as read

    kind = "audio" if args.audio is not None else "video" if args.video is not None else None
    if kind is None:
        return {}, []
    if args.duration is not None:
        spec = replace(spec, duration=args.duration)
    array, notes = read(getattr(args, kind), spec, kind)
    return {kind: array}, notes


def check_output(out: Path) -> None:
    """Refuse an --out that cannot be written before any sampling: a folder, or below a file."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {out / 'clip.mp4'}")
    parent = next((q for q in out.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a folder")
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"--out {out}: the clip is written as mp4; give a name ending in .mp4")


def run(args) -> int:
    from avgen.model.device import resolve_device
    from avgen.model.pipeline import GenerateSettings, generate, load_pipeline, write_outputs
    from avgen.train.checkpoint import check_weights_folder

    check_output(args.out)
    if args.seed + args.num_clips - 1 >= 2 ** 63:
        raise UsageError(f"--seed {args.seed} leaves no room for {args.num_clips} clips (clip i uses seed + i)")
    device = resolve_device(args.device)
    check_weights_folder(args.weights)
    pipe = load_pipeline(args.weights, str(device), args.sampler, compile=args.compile)
    pipe.parse_prompts(args.prompt)  # an unknown label fails here, before the given file is read
    given, notes = read_given(args, pipe.codec.spec)
    for note in notes:
        print(f"avgen generate: note: {note}", file=sys.stderr)
    mode = "a2v" if "audio" in given else "v2a" if "video" in given else "t2av"
    if mode == "t2av" and not args.prompt.strip():
        raise UsageError("give a prompt (e.g. \"3 1 4\"), or --audio / --video to follow")
    settings = GenerateSettings(prompt=args.prompt, seed=args.seed, steps=args.steps, sampler=args.sampler,
                                guidance_scale=args.guidance_scale, audio_guidance_scale=args.audio_guidance_scale,
                                modality_scale=args.modality_scale,
                                guidance_interval=interval_arg(args), timeline=timeline_arg(args),
                                postfilter=args.postfilter,
                                duration=args.duration,
                                num_clips=args.num_clips, device=args.device, mode=mode)
    clips = generate(pipe, settings, **given)
    for path in write_outputs(clips, args.out, settings, args.weights, str(device)):
        print(path)
    return 0
