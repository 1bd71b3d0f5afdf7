"""What the codec's round trip costs on real speech (`python -m avgen.eval.codec_check --measure`), and
the audio normalisation constants it is built with (`--fit-constants`): clips encoded to the model's
tokens and decoded back (Griffin-Lim included), compared with the originals in waveform, spectrum and
by the speech judge."""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from avgen.data import make_dataset
from avgen.eval.judges import Judges
from avgen.eval.suite import analyse
from avgen.model.codec import AVCodec
from avgen.model.config import CODEC_PRESETS, CodecConfig
from avgen.signal.onsets import AVSignal


def log_spectral_distance(ref: torch.Tensor, est: torch.Tensor, floor: float = 1e-5) -> float:
    """RMS over bins of the dB difference, averaged over frames that hold sound (in dB)."""
    db_r, db_e = (20 * torch.log10(x.clamp_min(floor)) for x in (ref, est))
    per_frame = (db_r - db_e).pow(2).mean(-1).sqrt()  # (B, K)
    voiced = ref.pow(2).sum(-1) > 1e-6 * ref.pow(2).sum(-1).amax()
    return float(per_frame[voiced].mean())


def spectral_snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    """10 log10(|X|^2 / (|X| - |Y|)^2) summed over the clip: how well magnitudes survive."""
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - est).pow(2).sum().clamp_min(1e-12)))


def waveform_snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - est).pow(2).sum().clamp_min(1e-12)))


def measure(num_clips: int = 32, seed: int = 0, cfg: CodecConfig | None = None, data_root=None) -> dict:
    """Round-trip real Talking Digits test clips through the codec and report the cost."""
    ds = make_dataset("talking-digits", split="test", seed=seed, data_root=data_root)
    codec = AVCodec(ds.spec, cfg)
    clips = [ds[i] for i in range(num_clips)]
    frames = torch.from_numpy(np.stack([c.frames for c in clips]))
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))
    tokens = codec.encode(frames, audio)
    out_frames, out_audio = codec.decode(tokens)
    ref_mag, est_mag = codec.magnitudes(audio), codec.magnitudes(out_audio)
    report = {
        "clips": num_clips,
        "video_max_abs_error": float((out_frames - frames).abs().max()),
        "audio_token_mean": float(tokens["audio"].mean()), "audio_token_std": float(tokens["audio"].std()),
        "video_token_mean": float(tokens["video"].mean()), "video_token_std": float(tokens["video"].std()),
        "waveform_snr_db": waveform_snr_db(audio, out_audio),
        "spectral_snr_db": spectral_snr_db(ref_mag, est_mag),
        "log_spectral_distance_db": log_spectral_distance(ref_mag, est_mag),
        "compressed_mean": float(ref_mag.pow(codec.cfg.power).mean()),
        "compressed_std": float(ref_mag.pow(codec.cfg.power).std()),
    }
    report["speech_judge_audio_digit_accuracy"] = judge_accuracy(clips, out_audio.numpy())
    return report


def judge_accuracy(clips, audio_out: np.ndarray) -> dict | str:
    """Audio digit accuracy of the evaluation suite (events detected, read by the speech judge, scored
    in order against the prompt) on the original clips and on the same clips with the codec's audio:
    the ceiling the codec leaves for every generated clip."""
    try:
        judges = Judges.load()
    except FileNotFoundError as e:
        return f"not measured: {e}"

    def pooled(cs) -> float:
        counts = np.array([analyse(AVSignal.from_clip(c), judges=judges, prompt=c.prompt).record["audio_digit_counts"]
                           for c in cs])
        return float(counts[:, 0].sum() / max(1, counts[:, 1].sum()))

    rebuilt = [replace(c, audio=np.asarray(a, np.float32)[: len(c.audio)]) for c, a in zip(clips, audio_out)]
    return {"original": pooled(clips), "reconstructed": pooled(rebuilt)}


def fit_audio_constants(num_clips: int = 512, seed: int = 0, cfg: CodecConfig | None = None,
                        data_root=None) -> dict:
    """Mean and std of the compressed features on Talking Digits *train* clips: the values of
    `CodecConfig.audio_offset` / `audio_scale` that make audio tokens zero-mean, unit-std."""
    ds = make_dataset("talking-digits", split="train", seed=seed, data_root=data_root)
    codec = AVCodec(ds.spec, (cfg or CodecConfig()).replace(audio_offset=0.0, audio_scale=1.0))
    audio = torch.from_numpy(np.stack([ds[i].audio for i in range(num_clips)]))
    feats = codec.compress(codec.magnitudes(audio))
    return {"audio_offset": float(feats.mean()), "audio_scale": float(feats.std())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m avgen.eval.codec_check", description=__doc__.splitlines()[0])
    p.add_argument("--measure", action="store_true", help="round-trip real Talking Digits test clips")
    p.add_argument("--fit-constants", action="store_true",
                   help="measure audio_offset / audio_scale on Talking Digits train clips")
    p.add_argument("--num-clips", type=int, default=32)
    p.add_argument("--n-mels", type=int, default=0)
    p.add_argument("--iters", type=int, default=CodecConfig.griffin_lim_iters)
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    if not (args.measure or args.fit_constants):
        p.print_help()
        return 0
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = CODEC_PRESETS["mel64" if args.n_mels == 64 else "stft"]
    cfg = cfg.replace(n_mels=args.n_mels, griffin_lim_iters=args.iters)
    run = fit_audio_constants if args.fit_constants else measure
    for key, value in run(args.num_clips, cfg=cfg, data_root=args.data_root).items():
        print(f"{key:28s} {value if not isinstance(value, float) else round(value, 4)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
