"""`avgen eval`: sync quality and audio-video consistency of clips (see avgen/eval/suite.py).

    avgen eval PATH [PATH ...] --json OUT.json [--prompts MANIFEST.json]
    avgen eval --dataset talking-digits --split test --n 200 --json OUT.json [--shift-ms MS | --swap-audio |
               --random-events | --corrupt noise|shuffle | --codec-roundtrip | --renoise T] [--frechet]
    avgen eval --generate N --weights DIR --json OUT.json [--duration S] [--dataset shapes]
    avgen eval --generate N --weights DIR --mode a2v|v2a [--no-prompt]     # from real test audio / video
    avgen eval --dataset talking-digits --denoise-error [--weights DIR] [--split train] [--n 256]
    avgen eval --generate N --weights DIR --dataset folder:PATH --judges JUDGES   # your own clips

Digits are read by the two trained judges (weights/judges); shapes clips by template judges
(avgen/eval/shape_judges.py, nothing to load), so glyph / tone accuracy fills the digit fields; a
folder's labels by the judges `avgen judges train --dataset folder:PATH` made for it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from avgen.cli.args import SEED, UsageError, add_settings, number, settings_from_args, whole
from avgen.model.config import DEFAULT_WEIGHTS

# Heavy modules (torch, the suite, the model) are imported inside the functions that run, so that
# building the parser (`avgen --help`) stays fast.
OPTIONS = ("steps", "sampler", "guidance_scale", "audio_guidance_scale", "modality_scale", "guidance_interval",
           "timeline", "postfilter", "device")  # the generation settings of `--generate`


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure AV sync and consistency of video files, dataset controls or a model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="video files with sound, or folders of them")
    p.add_argument("--json", type=Path, default=None, help="write per-clip records and the summary here "
                   "(plots go beside it: NAME.envelopes.png, NAME.offsets.png)")
    p.add_argument("--prompts", default=None, help="JSON manifest {file: prompt} for digit accuracy of given files")
    g = p.add_argument_group("dataset controls (render real clips, write mp4, evaluate the files)")
    g.add_argument("--dataset", default=None, help="talking-digits, shapes or folder:PATH (with --generate: the real reference)")
    g.add_argument("--split", default="test", choices=["train", "test"])
    g.add_argument("--n", type=whole(1, 100_000), default=100, help="clips to render (default: %(default)s)")
    g.add_argument("--shift-ms", type=number(-10_000.0, 10_000.0), default=0.0,
                   help="delay the audio by MS (negative: advance it)")
    g.add_argument("--swap-audio", action="store_true", help="take each clip's audio from another clip")
    g.add_argument("--random-events", action="store_true", help="move each event's sound to a random time")
    g.add_argument("--corrupt", choices=["noise", "shuffle"], default=None,
                   help="noise: noise frames and audio; shuffle: frames and 0.1 s audio chunks in random order")
    g.add_argument("--codec-roundtrip", action="store_true",
                   help="both modalities through the model's codec (of --weights, default: the shipped "
                   "weights), encode -> decode: the representation's ceiling")
    g.add_argument("--renoise", type=number(0.001, 0.999), default=None, metavar="T",
                   help="both modalities noised to level T (1 = pure noise) and denoised by the model of "
                   "--weights (default: the shipped weights): where along the noise scale it loses real clips")
    g.add_argument("--denoise-error", action="store_true",
                   help="no clips are written: the model's (--weights, default: the shipped weights) x0 error per "
                   "modality at fixed noise levels on the split's first N clips (see avgen/eval/denoise.py); the "
                   "same on --split train gives the generalisation gap")
    g.add_argument("--frechet", action="store_true",
                   help="also FD / KID against 2N other real clips, with the real-vs-real floor")
    g = p.add_argument_group("a model")
    g.add_argument("--generate", type=whole(1, 100_000), default=None, metavar="N",
                   help="generate N clips and evaluate them")
    g.add_argument("--weights", default=None,
                   help="model weights folder (for --generate, or the codec of --codec-roundtrip)")
    g.add_argument("--duration", type=number(0.25, 60.0), default=None,
                   help="seconds per generated clip (default: the model's training duration)")
    g.add_argument("--mode", choices=["t2av", "a2v", "v2a"], default="t2av",
                   help="t2av: from random prompts; a2v / v2a: from real test clips' audio / video, scored "
                   "against their prompts")
    g.add_argument("--no-prompt", action="store_true",
                   help="the null prompt: a2v / v2a scored against the real clip's prompt (the given modality "
                   "alone must carry the meaning); t2av unconditional, scored for AV agreement, sync and counts")
    add_settings(g, OPTIONS)
    p.add_argument("--judges", default=None, help="judges folder (default: weights/judges), or 'shapes' for the "
                   "shapes template judges (automatic with --dataset shapes)")
    p.add_argument("--no-judges", action="store_true", help="skip digit reading and Frechet")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--data-root", default=None, help="folder holding fsdd/ and mnist/")
    p.add_argument("--work-dir", default=None, help="keep rendered / generated mp4 files here (default: a temp dir)")
    p.add_argument("--per-clip", action="store_true", help="print one line per clip")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--threads", type=whole(1, 1024), default=1,
                   help="torch threads for the judges (one is fastest for their small convolutions on a busy CPU)")
    p.set_defaults(func=run)


def mode_of(args) -> str:
    modes = [m for m, on in (("files", bool(args.paths)), ("generate", args.generate is not None),
                             ("dataset", args.dataset is not None and args.generate is None)) if on]
    if len(modes) != 1:
        raise UsageError("give video PATHs, or --dataset NAME, or --generate N --weights DIR (exactly one)")
    mode = modes[0]
    through_model = args.codec_roundtrip or args.renoise is not None
    controls = args.shift_ms or args.swap_audio or args.random_events or args.corrupt or through_model
    if args.denoise_error:
        if mode != "dataset" or controls or args.frechet:
            raise UsageError("--denoise-error measures a model on --dataset clips as they are: no --generate, "
                             "paths, controls or --frechet")
        if args.duration is not None or args.mode != "t2av" or args.no_prompt or args.prompts:
            raise UsageError("--denoise-error takes --n, --split, --seed, --weights, --device and --json, not "
                             "--duration, --mode, --no-prompt or --prompts")
        if args.dataset != "talking-digits" and args.dataset != "shapes":
            raise UsageError(f"--denoise-error needs clips with events; {args.dataset} has none")
        if args.json is not None and args.json.is_dir():
            raise UsageError(f"--json {args.json} is a directory; give a file name")
        return "denoise"
    if controls and mode != "dataset":
        raise UsageError("--shift-ms, --swap-audio, --random-events, --corrupt, --codec-roundtrip and --renoise "
                         "apply to --dataset clips only")
    if through_model and args.corrupt:
        raise UsageError("--codec-roundtrip / --renoise measure real clips through the model's codec; --corrupt "
                         "replaces them: give one")
    if args.codec_roundtrip and args.renoise is not None:
        raise UsageError("--renoise already goes through the codec: drop --codec-roundtrip")
    if args.weights is not None and mode == "dataset" and not through_model:
        raise UsageError("--weights applies to --generate, --codec-roundtrip and --renoise (dataset clips need no "
                         "model)")
    if mode == "generate" and (args.weights is None or args.generate < 1):
        raise UsageError("--generate N needs N >= 1 and --weights DIR")
    if args.prompts and mode != "files":
        raise UsageError("--prompts applies to given files (dataset and generated clips know their prompts)")
    if args.frechet and reference_name(args) != "talking-digits":
        raise UsageError("Frechet distances use the digit judges' features: talking-digits only")
    if args.duration is not None and mode != "generate":
        raise UsageError("--duration applies to --generate (given and dataset clips have their own)")
    if not args.postfilter and mode != "generate":
        raise UsageError("--no-postfilter applies to --generate (re-noised clips are always decoded without it)")
    if (args.mode != "t2av" or args.no_prompt) and mode != "generate":
        raise UsageError("--mode and --no-prompt apply to --generate")
    if args.json is not None and args.json.is_dir():
        raise UsageError(f"--json {args.json} is a directory; give a file name such as {args.json / 'eval.json'}")
    return mode


def load_judges(args, required: bool):
    from avgen.eval.folder_judges import MIN_RELIABLE
    from avgen.eval.judges import Judges

    if args.no_judges:
        if required:
            raise UsageError("--generate and --frechet need the judges; drop --no-judges")
        return None
    if reference_name(args) == "shapes" or args.judges == "shapes":
        from avgen.eval.shape_judges import ShapeJudges

        return ShapeJudges.build()
    if reference_name(args).startswith("folder:") and args.judges is None:
        print("avgen eval: note: no judges for this folder's labels (make them with `avgen judges train --dataset "
              f"{reference_name(args)} --out DIR`, then pass --judges DIR): sync only", file=sys.stderr)
        return None
    try:
        return Judges.load(args.judges, min_accuracy=MIN_RELIABLE)
    except FileNotFoundError as e:
        if required:
            raise
        print(f"avgen eval: note: {e}; digit metrics skipped", file=sys.stderr)
        return None


def run(args) -> int:
    import torch

    mode = mode_of(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return denoise_report(args) if mode == "denoise" else evaluate_and_report(args, mode)
    finally:
        torch.set_num_threads(threads)  # callers in the same process (tests, the demo) keep theirs


def denoise_report(args) -> int:
    """--denoise-error: the table, and the JSON with what was measured on what."""
    from avgen.data import make_dataset
    from avgen.eval.denoise import LEVELS, dataset_denoise_error, format_table
    from avgen.model.config import spec_from_dict
    from avgen.model.device import resolve_device
    from avgen.model.weights import load_network
    from avgen.util import write_json

    weights = args.weights or DEFAULT_WEIGHTS
    model = load_network(weights).eval().to(resolve_device(args.device))
    ds = make_dataset(args.dataset, split=args.split, seed=args.seed, spec=spec_from_dict(model.config.clip_spec),
                      data_root=args.data_root)  # rendered at the model's own clip spec
    t0 = time.time()
    errors = dataset_denoise_error(model, ds, args.n, LEVELS, seed=args.seed)
    print(f"avgen eval (denoise error): {weights}, {args.n} {args.dataset} {args.split} clips "
          f"(seed {args.seed}), {time.time() - t0:.1f} s; x0 mean squared error per token channel")
    print(format_table(errors))
    if args.json:
        record = {"mode": "denoise", "weights": str(weights), "dataset": args.dataset, "split": args.split,
                  "n": args.n, "seed": args.seed, "levels": list(LEVELS), "x0_error": errors, "argv": sys.argv[1:]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0


def evaluate_and_report(args, mode: str) -> int:
    from avgen.eval import suite

    cfg = suite.EvalConfig(seed=args.seed)
    with_frechet = args.frechet or (mode == "generate" and reference_name(args) == "talking-digits")
    judges = load_judges(args, required=with_frechet)
    meta = {"mode": mode, "config": suite.config_json(cfg), "argv": sys.argv[1:]}
    with suite.WorkDir(args.work_dir) as work:
        t0 = time.time()
        items = collect_items(args, mode, work, meta)
        meta["seconds_render"] = round(time.time() - t0, 2)
        report = suite.evaluate(items, cfg, judges, progress=progress if len(items) >= 50 else None)
        if with_frechet:
            add_frechet(report, args, cfg, judges, work)
    meta["seconds_eval"] = round(report.seconds, 2)
    print_report(report, args, meta)
    if args.json:
        suite.write_json(report, args.json, meta)
        print(f"wrote {args.json}")
        if not args.no_plots:
            write_plots(report, args.json, cfg)
    return 0


def collect_items(args, mode: str, work: Path, meta: dict) -> list:
    """The files to evaluate: given ones, or dataset / generated clips written to `work`."""
    from avgen.api.evaluate import generated_items
    from avgen.eval import suite
    from avgen.model.pipeline import load_pipeline

    if mode == "files":
        return suite.file_items(args.paths, suite.read_manifest(args.prompts) if args.prompts else None)
    if mode == "dataset":
        codec = str(args.weights or DEFAULT_WEIGHTS) if args.codec_roundtrip or args.renoise is not None else None
        control = suite.Control(args.shift_ms, args.swap_audio, args.random_events, args.corrupt, codec, args.renoise)
        meta.update(dataset=args.dataset, split=args.split, control=control.describe())
        return suite.dataset_items(args.dataset, args.split, args.n, work / "clips", control, args.seed, args.data_root)
    settings = settings_from_args(args, seed=args.seed, mode=args.mode, duration=args.duration)
    pipe = load_pipeline(args.weights, settings.device)  # the weights are checked once, here
    pipe.set_progress_bar_config(disable=True)
    meta.update(weights=str(args.weights), dataset=reference_name(args), generate_mode=args.mode,
                postfilter=pipe.postfilter_record(settings.postfilter, settings.mode), prompt=not args.no_prompt,
                settings=settings.to_dict())
    return generated_items(pipe, settings, args.generate, work / "generated", reference_name(args), args.data_root,
                           prompt=not args.no_prompt)


def reference_name(args) -> str:
    return args.dataset or "talking-digits"


def add_frechet(report, args, cfg, judges, work: Path) -> None:
    """FD / KID against 2N real test clips of another seed (rendered and read like the rest)."""
    from avgen.eval import suite

    n = len(report.analyses)
    ref_items = suite.dataset_items(reference_name(args), "test", 2 * n, work / "reference", seed=args.seed + 1,
                                    data_root=args.data_root)
    reference = suite.evaluate(ref_items, cfg, judges)
    report.summary.update(suite.frechet_summary(report.analyses, reference.analyses, n, seed=args.seed))


def progress(done: int, total: int) -> None:
    if done % 25 == 0 or done == total:
        print(f"\r  evaluated {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def print_report(report, args, meta) -> None:
    from avgen.eval import suite

    if args.per_clip or len(report.clips) <= 12:
        print(suite.clip_table(report.clips))
        print()
    s = report.summary
    head = f"avgen eval ({meta['mode']}"
    head += f", {meta['dataset']} {meta.get('split', '')}, control: {meta['control']}" if meta["mode"] == "dataset" else ""
    print(f"{head}): {s['n_clips']} clips, {s['n_errors']} unreadable, analysed in {report.seconds:.1f} s")
    print(suite.format_table(s))


def write_plots(report, json_path: Path, cfg) -> None:
    from avgen.eval import suite

    stem = json_path.with_suffix("")
    written = [suite.plot_envelopes(report.analyses, Path(f"{stem}.envelopes.png"), cfg.n_plots),
               suite.plot_offsets(report.clips, Path(f"{stem}.offsets.png"))]
    if any(w is None for w in written) and suite.pyplot() is None:
        print("avgen eval: note: matplotlib is not installed; plots skipped", file=sys.stderr)
    for w in written:
        if w is not None:
            print(f"wrote {w}")
