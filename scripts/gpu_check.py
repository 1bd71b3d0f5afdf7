"""Device check of the joint model: CPU (fp32) against CUDA (bf16 autocast).

    python scripts/gpu_check.py [--weights weights/avgen] [--steps 25] [--seed 0] [--out DIR]

1. Velocity: one guided denoising step (cond + uncond + no-cross-modal passes, batched) from the
   same inputs on both devices, at noise levels 0.9 and 0.5: relative L2 difference <= 2e-2.
2. Clip: the same seed on both devices (the initial noise is drawn on the CPU either way); the
   events the evaluation suite detects in picture and sound must agree (same count, onsets within
   one video frame). Checked only with --weights: a random network's "events" mean nothing.

Without --weights the network is a seeded AVDiT-S with every weight random (the zero-initialised
gates too, so every path is exercised). Without CUDA only the CPU half runs; it prints that the
CUDA half was skipped and exits 0. Exit status 1 when a check fails. With --out, the figures are
also written to OUT/gpu_check.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avgen.data import make_dataset  # noqa: E402
from avgen.data.clip import ClipSpec  # noqa: E402
from avgen.model.objective import add_noise, encode_prompts, x0_to_velocity  # noqa: E402
from avgen.api.generate import GenerateSettings, generate  # noqa: E402
from avgen.model.pipeline import AVGenPipeline, load_pipeline  # noqa: E402
from avgen.model.conditioning import Conditioning  # noqa: E402
from avgen.model.sampler import Guidance  # noqa: E402
from avgen.model.timeline import slots_from_events  # noqa: E402
from avgen.model.transformer import AVDiT  # noqa: E402

VELOCITY_RTOL = 2e-2


def prompt_labels(vocab) -> list[list[str]]:
    """"3 1 4", "7", "0 9" for digits; the same positions of any other vocabulary."""
    return [[vocab[i % len(vocab)] for i in row] for row in ((3, 1, 4), (7,), (0, 9))]


def random_pipeline(seed: int) -> AVGenPipeline:
    torch.manual_seed(seed)
    model = AVDiT.from_preset("AVDiT-S", ClipSpec(), tuple("0123456789"), 3)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return AVGenPipeline.from_transformer(model.eval())


def step_inputs(pipe: AVGenPipeline, sigma: float, seed: int) -> tuple[dict, dict, dict]:
    """Noisy tokens of real-looking clips (shapes dataset, no files needed) at noise level sigma."""
    spec = pipe.codec.spec
    ds = make_dataset("shapes", split="test", seed=seed, spec=spec)
    labels = prompt_labels(pipe.vocab)
    clips = [ds[i] for i in range(len(labels))]
    x0 = pipe.codec.encode(torch.from_numpy(np.stack([c.frames for c in clips])),
                           torch.from_numpy(np.stack([c.audio for c in clips])))
    g = torch.Generator().manual_seed(seed)
    t = {m: torch.full((len(clips),), sigma) for m in x0}
    x = {m: add_noise(x0[m], torch.randn(x0[m].shape, generator=g), t[m]) for m in x0}
    vocab, max_events = pipe.vocab, pipe.transformer.config.max_events
    prompts = {"cond": encode_prompts(labels, vocab, max_events), "uncond": encode_prompts([[]] * len(clips), vocab, max_events)}
    if pipe.transformer.config.get("timeline_cond", False):  # the clips' own timelines, as many events as labels
        n, seconds = x0["video"].shape[1], pipe.transformer.config.token_seconds
        prompts["slots"] = torch.as_tensor(np.stack([slots_from_events(c.truth()[:len(lab)], n, seconds)
                                                     for c, lab in zip(clips, labels)]))
    return x, t, prompts


def velocity_on(pipe: AVGenPipeline, device: str, x: dict, t: dict, prompts: dict) -> dict[str, torch.Tensor]:
    pipe.to(device)
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    guidance = Guidance(video=4.0, audio=4.0, modality_video=2.0, modality_audio=2.0)
    with torch.no_grad():
        on = {k: p.to(device) if isinstance(p, torch.Tensor) else tuple(v.to(device) for v in p)
              for k, p in prompts.items()}
        cond = Conditioning(on["cond"], on["uncond"], on.get("slots")).encode_states(pipe.transformer)
        # the sampler's path: this step's AdaLN rows from a table built under the same autocast
        table = cond.modulation_table(pipe.transformer, [{m: float(t[m][0]) for m in t}])
        x0 = pipe.predict_x0(move(x), move(t), cond, guidance, table)
    return {m: x0_to_velocity(x[m], x0[m].float().cpu(), t[m]) for m in x0}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def events(clip) -> dict[str, list[float]]:
    from avgen.signal.onsets import AVSignal, detect_events, onsets, tracks

    return {m: onsets(detect_events(track)).round(4).tolist() for m, track in tracks(AVSignal.from_clip(clip)).items()}


def events_agree(a: dict, b: dict, tol_s: float) -> bool:
    return all(len(a[m]) == len(b[m]) and all(abs(x - y) <= tol_s for x, y in zip(a[m], b[m])) for m in a)


def clip_on(pipe: AVGenPipeline, device: str, settings: GenerateSettings):
    pipe.to(device)
    start = time.perf_counter()
    clip = generate(pipe, settings)[0]
    return clip, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 8))
    pipe = load_pipeline(args.weights, device="cpu") if args.weights else random_pipeline(args.seed)
    pipe.set_progress_bar_config(disable=True)
    cuda = torch.cuda.is_available()
    report: dict = {"weights": str(args.weights) if args.weights else "random AVDiT-S", "cuda": cuda,
                    "device_name": torch.cuda.get_device_name() if cuda else None}
    ok = True

    for sigma in (0.9, 0.5):
        x, t, prompts = step_inputs(pipe, sigma, args.seed)
        v_cpu = velocity_on(pipe, "cpu", x, t, prompts)
        report[f"velocity_norm_cpu_t{sigma}"] = {m: float(v.norm()) for m, v in v_cpu.items()}
        if cuda:
            v_gpu = velocity_on(pipe, "cuda", x, t, prompts)
            diff = {m: relative_difference(v_gpu[m], v_cpu[m]) for m in v_cpu}
            report[f"velocity_rel_diff_t{sigma}"] = diff
            ok &= all(d <= VELOCITY_RTOL for d in diff.values())

    settings = GenerateSettings(prompt=" ".join(prompt_labels(pipe.vocab)[0]), seed=args.seed, steps=args.steps)
    clip_cpu, seconds_cpu = clip_on(pipe, "cpu", settings)
    report["cpu_seconds_per_clip"] = round(seconds_cpu, 3)
    report["events_cpu"] = events(clip_cpu)
    if cuda:
        clip_on(pipe, "cuda", settings)  # warm-up: kernels, allocator
        clip_gpu, seconds_gpu = clip_on(pipe, "cuda", settings)
        report["cuda_seconds_per_clip"] = round(seconds_gpu, 3)
        report["events_cuda"] = events(clip_gpu)
        report["frames_mean_abs_diff"] = float(np.abs(clip_gpu.frames - clip_cpu.frames).mean())
        same = events_agree(report["events_cpu"], report["events_cuda"], 1.0 / clip_cpu.fps)
        report["events_agree"] = same
        if args.weights:
            ok &= same
    else:
        report["note"] = "no CUDA device here: only the CPU half ran"

    report["ok"] = bool(ok)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
