"""`avgen judges train`: train the picture and sound judges the evaluation suite reads with.

    avgen judges train                                      # the digit judges (weights/judges)
    avgen judges train --dataset folder:PATH --out DIR      # judges of a captioned folder's own labels

Digits: train splits only (MNIST t10k indices < 8000, FSDD takes 5-49); accuracy is then measured on
the test splits, from the source files and from Talking Digits clips decoded from mp4. A folder: the
events derived from its train files (see `avgen data stats --dataset folder:PATH`), measured on its
held-out files. Either way the accuracy is written into each judge's JSON next to its safetensors
weights, and `avgen eval --judges DIR` refuses judges that read too few held-out events right.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from avgen.cli.args import SEED, UsageError, number, whole

# Heavy modules (torch, diffusers, gradio) are imported inside the functions that run the command,
# so that building the parser (`avgen --help`) stays fast.


def register(sub) -> None:
    p = sub.add_parser("judges", help="train the digit judges used by `avgen eval`")
    jsub = p.add_subparsers(dest="judges_command", metavar="ACTION")
    jsub.required = True
    t = jsub.add_parser("train", help="train the image and speech judges and measure them on the test split",
                        description=__doc__)
    t.add_argument("--out", type=Path, default=None, help="output folder (default: weights/judges; required with "
                   "--dataset)")
    t.add_argument("--dataset", default=None, metavar="folder:PATH",
                   help="judges for a captioned folder's labels instead of the digits")
    t.add_argument("--holdout", type=number(0.0, 0.9), default=0.1,
                   help="with --dataset: the share of files held out to measure the judges (default: %(default)s)")
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

    if args.dataset is not None and (not args.dataset.startswith("folder:") or args.out is None):
        raise UsageError("--dataset takes folder:PATH, and needs --out DIR (the digit judges live in weights/judges)")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return train_folder(args) if args.dataset else train_and_check(args)
    finally:
        torch.set_num_threads(threads)


def train_folder(args) -> int:
    from avgen.data import make_dataset
    from avgen.eval.folder_judges import MIN_RELIABLE, save_judges, train_folder_judges

    train = make_dataset(args.dataset, split="train", holdout=args.holdout)
    test = make_dataset(args.dataset, split="test", holdout=args.holdout)
    judges, report = train_folder_judges(train, test, seed=args.seed, small=args.tiny)
    save_judges(judges, args.out)
    for name, what in (("image", "picture"), ("speech", "sound")):
        acc = report[f"{name}_heldout_accuracy"]
        verdict = "" if acc >= MIN_RELIABLE else f": under {MIN_RELIABLE:.0%}, `avgen eval` will refuse to score with it"
        print(f"  {what} judge: {acc:.1%} of {report['heldout_events']} held-out events read right{verdict}")
    print(f"wrote the judges of {len(report['labels'])} labels ({', '.join(report['labels'])}) to {args.out}")
    return 0


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
