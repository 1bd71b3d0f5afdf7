"""`avgen data ...`: preview, download, verify and measure the datasets."""
from __future__ import annotations

import argparse
import time

from avgen.cli.args import SEED, number, whole
from avgen.data import ClipSpec, make_dataset
from avgen.util import dumps


def add_dataset_args(p: argparse.ArgumentParser, default: str = "talking-digits") -> None:
    """Flags every command that reads a dataset shares (data, train, eval)."""
    p.add_argument("--dataset", default=default, help="talking-digits, shapes or folder:PATH (default: %(default)s)")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--data-root", default=None,
                   help="folder holding fsdd/ and mnist/ (default: $AVGEN_DATA, else ../shared/data)")
    p.add_argument("--duration", type=number(0.0, 60.0, above=True), default=ClipSpec.duration,
                   help="clip length in seconds")


def dataset_from_args(args):
    spec = ClipSpec(duration=args.duration)
    return make_dataset(args.dataset, split=args.split, seed=args.seed, spec=spec, data_root=args.data_root)


def cmd_preview(args) -> int:
    from avgen.data.preview import write_preview

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    paths = write_preview(dataset_from_args(args), args.n, args.out, scale=args.scale, start=args.start)
    for p in paths:
        print(p)
    return 0


def cmd_download(args) -> int:
    from avgen.data.download import DownloadError, download

    from avgen.data.download import FSDD_URL, MNIST_BASE

    try:
        download(args.root, fsdd_url=args.fsdd_url or FSDD_URL, mnist_base=args.mnist_base or MNIST_BASE,
                 force=args.force)
    except DownloadError as e:
        raise ValueError(str(e)) from None
    return 0


def cmd_verify(args) -> int:
    from avgen.data.download import verify_fsdd, verify_mnist
    from avgen.data.sources import resolve_data_root

    root = resolve_data_root(args.root)
    bad_f, bad_m = verify_fsdd(root), verify_mnist(root)
    print(f"{root}: FSDD {3000 - len(bad_f)}/3000 recordings verified, MNIST {2 - len(bad_m)}/2 files verified")
    if bad_f or bad_m:
        raise ValueError(f"verification failed for {(bad_f + bad_m)[:5]}{' ...' if len(bad_f + bad_m) > 5 else ''}")
    return 0


def cmd_stats(args) -> int:
    """Clips per second on one core, and (talking-digits) what the trimming rule does."""
    import numpy as np
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # "clips per second on one core"
    try:
        t0 = time.perf_counter()
        ds = dataset_from_args(args)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        clips = [ds[i] for i in range(args.n)]
        rate = args.n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (a test, a notebook) keeps its own
    n_events = [len(c.events) for c in clips]
    durs = [e.end_s - e.start_s for c in clips for e in c.events]
    out = {"dataset": args.dataset, "split": args.split, "setup_s": round(load_s, 3), "clips_per_s_one_core": round(rate, 1),
           "events_per_clip": {k: n_events.count(k) for k in sorted(set(n_events))},
           "event_duration_s": {"median": float(np.median(durs)), "max": float(np.max(durs))} if durs else {}}
    if args.dataset == "talking-digits":
        out["trimming"] = trimming_report(ds.root)
    if hasattr(ds, "timeline_report"):  # a folder: which clips got a timeline from their events, and why not
        out["timelines"] = ds.timeline_report()
    print(dumps(out))
    return 0


def trimming_report(root) -> dict:
    """Lead-in / tail of every FSDD file before and after trimming (the data README's figures): the lead-in
    after trimming is measured again, by the same rule, on the segment a clip actually uses."""
    import numpy as np
    from avgen.data.sources import list_fsdd, read_wav
    from avgen.data.talking_digits import voiced_segment, voiced_span

    spec = ClipSpec()
    lead, tail, kept, after = [], [], [], []
    for r in list_fsdd(root):
        x, sr = read_wav(r.path)
        a, b = voiced_span(x, sr)
        lead.append(a / sr)
        tail.append((len(x) - b) / sr)
        kept.append((b - a) / sr)
        segment = voiced_segment(x, sr, spec)
        after.append(voiced_span(segment, spec.sample_rate)[0] / spec.sample_rate)
    lead, tail, after = np.array(lead) * 1000, np.array(tail) * 1000, np.array(after) * 1000

    def pct(v):
        return {"median_ms": round(float(np.median(v)), 1), "p90_ms": round(float(np.percentile(v, 90)), 1),
                "p99_ms": round(float(np.percentile(v, 99)), 1), "max_ms": round(float(v.max()), 1)}
    return {"files": len(kept), "lead_in_removed": pct(lead), "tail_removed": pct(tail),
            "files_with_lead_in_over_one_frame_before": round(float((lead > 62.5).mean()), 3),
            "lead_in_after_trimming": pct(after),
            "files_with_lead_in_over_one_frame_after": round(float((after > 62.5).mean()), 3),
            "voiced_duration_s": {"median": round(float(np.median(kept)), 3), "max": round(float(np.max(kept)), 3)}}


def register(sub) -> None:
    p = sub.add_parser("data", help="preview, download, verify and measure datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    q = dsub.add_parser("preview", help="write N clips as mp4 + PNG sheet (frames over spectrogram, events marked)")
    add_dataset_args(q)
    q.add_argument("--n", type=whole(1, 10_000), default=4, help="number of clips (default: %(default)s)")
    q.add_argument("--start", type=whole(0), default=0, help="index of the first clip")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--scale", type=whole(1, 64), default=8, help="upscaling of the mp4 picture (default: %(default)s)")
    q.set_defaults(func=cmd_preview)

    q = dsub.add_parser("download", help="download FSDD v1.0.10 and the MNIST test set and verify their SHA-256")
    q.add_argument("--root", required=True, help="destination folder (becomes --data-root)")
    q.add_argument("--fsdd-url", default=None, help=argparse.SUPPRESS)
    q.add_argument("--mnist-base", default=None, help=argparse.SUPPRESS)
    q.add_argument("--force", action="store_true", help="download even if the files already verify")
    q.set_defaults(func=cmd_download)

    q = dsub.add_parser("verify", help="check a data root against the project's SHA-256 manifest")
    q.add_argument("--root", default=None, help="data root (default: $AVGEN_DATA, else ../shared/data)")
    q.set_defaults(func=cmd_verify)

    q = dsub.add_parser("stats", help="clips/s on one core and what the trimming rule does")
    add_dataset_args(q)
    q.add_argument("--n", type=whole(1, 1_000_000), default=2000)
    q.set_defaults(func=cmd_stats)
