"""`avgen judges train`: train the image and speech digit judges the evaluation suite reads with.

Train splits only (MNIST t10k indices < 8000, FSDD takes 5-49); then accuracy is measured on
the test splits, from the source files and from Talking Digits clips decoded from mp4, and
written into each judge's JSON next to its safetensors weights.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from avgen.cli.args import SEED, whole

# Heavy modules (torch, diffusers, gradio) are imported inside the functions that run the command,
# so that building the parser (`avgen --help`) stays fast.


def register(sub) -> None:
    p = sub.add_parser("judges", help="train the digit judges used by `avgen eval`")
    jsub = p.add_subparsers(dest="judges_command", metavar="ACTION")
    jsub.required = True
    t = jsub.add_parser("train", help="train the image and speech judges and measure them on the test split",
                        description=__doc__)
    t.add_argument("--out", type=Path, default=None, help="output folder (default: weights/judges)")
    t.add_argument("--which", nargs="+", choices=["image", "speech"], default=["image", "speech"])
    t.add_argument("--epochs", type=whole(1, 10_000), default=None, help="override the presets' epoch counts")
    t.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tiny nets, 1 epoch, 256 items)")
    t.add_argument("--check-clips", type=whole(0, 100_000), default=150,
                   help="Talking Digits test clips for the mp4 accuracy check (0: skip; default: %(default)s)")
    t.add_argument("--seed", type=SEED, default=0)
    t.add_argument("--data-root", default=None, help="folder holding fsdd/ and mnist/")
    t.add_argument("--threads", type=whole(1, 1024), default=1, help="torch threads (one is fastest for these small nets)")
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return train_and_check(args)
    finally:
        torch.set_num_threads(threads)


def train_and_check(args) -> int:
    from avgen.eval import judges as J

    out = args.out or J.DEFAULT_DIR
    trainers = {"image": J.train_image_judge, "speech": J.train_speech_judge}
    trained = {}
    for name in args.which:
        cfg = J.tiny(J.PRESETS[name]) if args.tiny else J.PRESETS[name]
        cfg = dataclasses.replace(cfg, seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
        print(f"training the {name} judge ({cfg.epochs} epochs)", flush=True)
        judge, log = trainers[name](args.data_root, cfg, limit=256 if args.tiny else None, log_every=1)
        acc = J.split_accuracy(judge, name, args.data_root)
        print(f"  {name}: {log.seconds:.0f} s, test-split accuracy from the source files {acc:.4f}")
        trained[name] = (judge, {"train_seconds": round(log.seconds, 1), "final_loss": log.losses[-1],
                                 "test_accuracy_source": acc})
    if args.check_clips and set(trained) == {"image", "speech"}:
        mp4 = J.accuracy_on_mp4(J.Judges(trained["image"][0], trained["speech"][0]), args.check_clips,
                                data_root=args.data_root)
        print(f"  from mp4 ({mp4['events']} events of {mp4['clips']} test clips): image {mp4['image']:.4f}, "
              f"speech {mp4['speech']:.4f}")
        for name in trained:
            trained[name][1]["test_accuracy_mp4"] = {"accuracy": mp4["image" if name == "image" else "speech"],
                                                     "events": mp4["events"], "clips": mp4["clips"]}
    for name, (judge, info) in trained.items():
        judge.save(out, {"trained_on": "train split only (MNIST t10k < 8000, FSDD takes 5-49)", **info})
    print(f"wrote {', '.join(sorted(trained))} judge(s) to {out}")
    return 0
