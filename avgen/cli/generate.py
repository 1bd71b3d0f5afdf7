"""`avgen generate "3 1 4" --out clip.mp4`: sample clips from trained weights (a thin layer over
`avgen.api.generate`). An empty prompt makes an unconditional clip; `--audio in.wav` makes the picture
follow given sound (A2V), `--video in.mp4` the sound follow a given picture (V2A). Every mp4 gets a
JSON sidecar that reproduces it."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from avgen.api.settings import parse_spans
from avgen.cli.args import UsageError, add_settings, settings_from_args
from avgen.model.config import DEFAULT_WEIGHTS
from avgen.util import output_paths

# every generation setting of the table but the mode, which the given file decides
OPTIONS = ("seed", "steps", "sampler", "guidance_scale", "audio_guidance_scale", "modality_scale",
           "guidance_interval", "timeline", "postfilter", "duration", "num_clips", "device")


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate video + soundtrack from a prompt",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", default="",
                   help='labels, e.g. "3 1 4" (spaces or commas; "314" for digits); empty: an unconditional clip')
    p.add_argument("--out", required=True, type=Path, help="output mp4 (several clips: OUT_000.mp4, ...)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                   help="weights folder from `avgen export` (default: the shipped weights/avgen)")
    add_settings(p, OPTIONS)
    p.add_argument("--force", action="store_true", help="replace clips and sidecars that already exist at --out")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network: the first call compiles (about a minute on a 2-core CPU, "
                   "seconds once inductor's cache has it), then each denoising loop runs ~1.2x faster on CPU "
                   "(`avgen bench --captured`); pays for --num-clips runs, not for one clip")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--audio", type=Path, help="audio (wav, or a video file's sound track) to hold fixed: A2V")
    given.add_argument("--video", type=Path, help="video file whose picture is held fixed: V2A")
    given.add_argument("--edit", type=Path, help="a clip (with sound) to edit: its picture and sound are kept in the "
                       "--keep spans and made anew from the prompt everywhere else (temporal inpainting)")
    p.add_argument("--keep", default=None, metavar="SPANS",
                   help="with --edit: the spans to keep, START:END in seconds, comma-separated (e.g. 0:1,2:3)")
    p.set_defaults(func=run)


def check_output(out: Path, num_clips: int = 1, force: bool = False) -> None:
    """Refuse, before any sampling, an --out that cannot or should not be written: a folder, a path below
    a file, a folder nobody may write to, or (without --force) clips or sidecars that already exist."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {out / 'clip.mp4'}")
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"--out {out}: the clip is written as mp4; give a name ending in .mp4")
    parent = next((q for q in out.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a folder")
    if parent is not None:  # the one sure test of writing is to write: a small file, removed at once
        try:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".avgen-", suffix=".probe"):
                pass
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write in {parent} ({e.strerror or type(e).__name__})") from None
    if not force:
        taken = [p for clip in output_paths(out, num_clips) for p in (clip, clip.with_suffix(".json")) if p.exists()]
        if taken:
            shown = ", ".join(map(str, taken[:2])) + (f" and {len(taken) - 2} more" if len(taken) > 2 else "")
            raise UsageError(f"--out {out}: would replace {shown}; pass --force to replace, or give another name")


def read_given(args, spec) -> tuple[dict, list[str]]:
    """--audio / --video -> ({audio: (S,)} or {video: (T, H, W, C)} on the model's clock, notes on how the
    file was fitted): the library reader the studio's uploads go through too."""
    from dataclasses import replace

    from avgen.data.given import read_given as read

    kind = "audio" if args.audio is not None else "video" if args.video is not None else None
    if kind is None:
        return {}, []
    if args.duration is not None:
        spec = replace(spec, duration=args.duration)
    array, notes = read(getattr(args, kind), spec, kind)
    return {kind: array}, notes


def read_edit(args, spec, spans):
    """--edit CLIP -> (an `Edit` of its picture and sound on the model's clock, the reader's notes), or (None, [])."""
    from avgen.api.generate import Edit
    from avgen.data.given import read_given as read

    if args.edit is None:
        return None, []
    (frames, n1), (audio, n2) = (read(args.edit, spec, k) for k in ("video", "audio"))
    return Edit(frames, audio, spans), n1 + n2


def run(args) -> int:
    # imported here (torch, diffusers, PyAV): building the parser stays fast
    from avgen.api.generate import generate, load_pipeline
    from avgen.api.records import write_outputs
    from avgen.model.device import resolve_device

    check_output(args.out, args.num_clips, args.force)
    if (args.edit is None) != (args.keep is None):
        raise UsageError("--edit CLIP and --keep SPANS go together: the clip to edit and what of it to keep")
    if args.edit is not None and args.duration is not None:
        raise UsageError("--edit keeps the clip's own length: leave out --duration")
    spans = parse_spans(args.keep) if args.keep is not None else None
    kind = "audio" if args.audio is not None else "video" if args.video is not None else None
    settings = settings_from_args(args, prompt=args.prompt, mode={"audio": "a2v", "video": "v2a"}.get(kind, "t2av"))
    device = resolve_device(settings.device)
    pipe = load_pipeline(args.weights, str(device), settings.sampler, compile=args.compile)
    pipe.vocabulary_for(settings.duration).parse(settings.prompt)  # an unknown label fails before files are read
    given, notes = read_given(args, pipe.codec.spec)
    edit, edit_notes = read_edit(args, pipe.codec.spec, spans)
    notes = notes + edit_notes
    for note in notes:
        print(f"avgen generate: note: {note}", file=sys.stderr)
    clips = generate(pipe, settings, **given, edit=edit)
    for path in write_outputs(clips, args.out, settings, pipe, args.weights, str(device)):
        print(path)
    return 0
