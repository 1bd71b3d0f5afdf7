"""`avgen generate "3 1 4" --out clip.mp4`: sample clips from trained weights (thin CLI layer over
`avgen.model.pipeline`). `--audio in.wav` makes the picture follow given sound (A2V), `--video in.mp4`
the sound follow a given picture (V2A). Every mp4 gets a JSON sidecar that reproduces it."""
from __future__ import annotations

import argparse
from pathlib import Path

from avgen.cli import UsageError


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
    p.add_argument("--seed", type=int, default=d.seed, help="clip i uses seed + i")
    p.add_argument("--steps", type=int, default=d.steps, help="denoising steps")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=d.sampler)
    p.add_argument("--guidance-scale", type=float, default=d.guidance_scale, help="video prompt guidance")
    p.add_argument("--audio-guidance-scale", type=float, default=None,
                   help="audio prompt guidance (default: --guidance-scale)")
    p.add_argument("--modality-scale", type=float, default=d.modality_scale,
                   help="guidance away from the pass without the cross-modal path (1 = off)")
    p.add_argument("--duration", type=float, default=None, help="seconds (default: the model's clip length)")
    p.add_argument("--num-clips", type=int, default=d.num_clips)
    p.add_argument("--device", choices=DEVICES, default=d.device)
    p.add_argument("--compile", action="store_true", help="torch.compile the network (CUDA)")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--audio", type=Path, help="audio (wav, or a video file's sound track) to hold fixed: A2V")
    given.add_argument("--video", type=Path, help="video file whose picture is held fixed: V2A")
    p.set_defaults(func=run)


def read_given(args, spec) -> dict:
    """--audio / --video -> {audio: (S,)} or {video: (T, H, W, C)} conformed to the model's clip spec."""
    from dataclasses import replace

    import numpy as np

    from avgen.data.io import read_clip, resample_audio
    from avgen.data.sources import SourceError, read_wav

    if args.duration is not None:
        spec = replace(spec, duration=args.duration)
    if args.video is not None:
        return {"video": read_clip(args.video, spec, duration=spec.duration).frames}
    if args.audio is None:
        return {}
    if args.audio.suffix.lower() == ".wav":
        try:
            x, sr = read_wav(args.audio)  # mono float
        except SourceError:
            raise UsageError(f"{args.audio}: not a readable 16-bit PCM WAV file") from None
        x = resample_audio(x, sr, spec.sample_rate)
    else:
        x = read_clip(args.audio, spec, duration=spec.duration).audio
    # the model's clock: pad with silence or cut to exactly the clip's length
    x = x[: spec.num_samples]
    return {"audio": np.pad(x, (0, spec.num_samples - len(x)))}


def run(args) -> int:
    from avgen.model.device import resolve_device
    from avgen.model.pipeline import GenerateSettings, generate, load_pipeline, write_outputs

    for name in ("steps", "num_clips"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    device = resolve_device(args.device)
    pipe = load_pipeline(args.weights, str(device), args.sampler, compile=args.compile)
    given = read_given(args, pipe.codec.spec)
    mode = "a2v" if "audio" in given else "v2a" if "video" in given else "t2av"
    if mode == "t2av" and not args.prompt.strip():
        raise UsageError("give a prompt (e.g. \"3 1 4\"), or --audio / --video to follow")
    settings = GenerateSettings(prompt=args.prompt, seed=args.seed, steps=args.steps, sampler=args.sampler,
                                guidance_scale=args.guidance_scale, audio_guidance_scale=args.audio_guidance_scale,
                                modality_scale=args.modality_scale, duration=args.duration,
                                num_clips=args.num_clips, device=args.device, mode=mode)
    clips = generate(pipe, settings, **given)
    for path in write_outputs(clips, args.out, settings, args.weights, str(device)):
        print(path)
    return 0
