"""Clip <-> tokens: the fixed, invertible representation the model denoises.

One token per video frame for BOTH modalities, on one clock:
  video token n = the C*H*W pixels of frame n, scaled to [-1, 1];
  audio token n = the magnitude STFT of the audio of the same 1/fps seconds: `stft_per_frame`
                  STFT frames (hop = samples_per_frame / stft_per_frame) of n_fft // 2 + 1 bins
                  (or n_mels mel bands), compressed |X|**power and normalised by fixed constants.
So the two token rates are equal and token n of either modality covers [n/fps, (n+1)/fps).

STFT frame alignment: frame k of the audio is centred on the middle of its hop cell
[k*hop, (k+1)*hop), so the 4 frames of a token sit inside their video frame's time span (a plain
centred STFT would put them half a hop early). We get this with torch's centred STFT on the
signal delayed by `hop - hop // 2` samples, dropping the first and last frames; Griffin-Lim
(torchaudio, which assumes a centred STFT) inverts the same layout, with silent frames standing in
for the two dropped ones, and the delay is removed afterwards.

Phase is not stored: Griffin-Lim rebuilds it (deterministic: zero initial phase, no RNG).
`python -m avgen.eval.codec_check --measure` reports what this round trip costs on real speech.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from avgen.data.clip import ClipSpec
from avgen.model.config import CodecConfig, spec_from_dict


class AVCodec(nn.Module):
    """No learned parameters; an `nn.Module` only so its buffers follow `.to(device)`."""

    def __init__(self, spec: ClipSpec, cfg: CodecConfig | None = None):
        super().__init__()
        self.spec, self.cfg = spec, cfg or CodecConfig()
        c = self.cfg
        if spec.samples_per_frame % c.stft_per_frame:
            raise ValueError(f"samples_per_frame {spec.samples_per_frame} is not divisible by "
                             f"stft_per_frame {c.stft_per_frame}")
        if spec.num_frames % c.frames_per_token:
            raise ValueError(f"{spec.num_frames} frames do not split into tokens of {c.frames_per_token} frames")
        self.hop = spec.samples_per_frame // c.stft_per_frame
        if c.n_fft < self.hop:
            raise ValueError(f"n_fft {c.n_fft} is shorter than the hop {self.hop}: audio would be skipped")
        self.delay = self.hop - self.hop // 2  # see the module docstring
        self.n_bins = c.n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)
        if c.n_mels:
            fb = torchaudio.functional.melscale_fbanks(self.n_bins, 0.0, spec.sample_rate / 2, c.n_mels,
                                                       spec.sample_rate, norm="slaney", mel_scale="slaney")
            self.register_buffer("mel_fb", fb, persistent=False)  # (bins, mels)
            self.register_buffer("mel_pinv", torch.linalg.pinv(fb), persistent=False)  # (mels, bins)

    @classmethod
    def from_config(cls, model_config) -> "AVCodec":
        """The codec a trained model was built for, from its stored config (see config.py)."""
        if model_config.get("clip_spec") is None or model_config.get("codec") is None:
            raise ValueError("this model config stores no clip_spec / codec; build models with AVDiT.from_preset")
        return cls(spec_from_dict(model_config["clip_spec"]), CodecConfig.from_dict(model_config["codec"]))

    # ------------------------------------------------------------------ layout
    @property
    def dims(self) -> dict[str, int]:
        s, c = self.spec, self.cfg
        return {"video": c.frames_per_token * s.height * s.width * s.channels,
                "audio": c.frames_per_token * c.stft_per_frame * (c.n_mels or self.n_bins)}

    def num_tokens(self, duration_s: float | None = None) -> int:
        frames = self.spec.num_frames if duration_s is None else int(round(duration_s * self.spec.fps))
        if frames <= 0 or frames % self.cfg.frames_per_token:
            raise ValueError(f"{duration_s} s = {frames} frames is not a positive whole number of "
                             f"{self.cfg.frames_per_token}-frame tokens")
        return frames // self.cfg.frames_per_token

    def token_times(self, num_tokens: int | None = None) -> torch.Tensor:
        """(N,) centre time in seconds of each token, the same for video and audio token n."""
        n = self.num_tokens() if num_tokens is None else num_tokens
        seconds_per_token = self.cfg.frames_per_token / self.spec.fps
        return (torch.arange(n, dtype=torch.float64) + 0.5).mul(seconds_per_token).float()

    # ------------------------------------------------------------------ audio features
    @property
    def stft_per_token(self) -> int:
        return self.cfg.frames_per_token * self.cfg.stft_per_frame

    def audio_frames(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, Da) audio tokens -> (B, K, Fa) normalised features, one row per STFT frame."""
        return rearrange(tokens, "b n (k f) -> b (n k) f", k=self.stft_per_token)

    def audio_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, K, Fa) normalised features -> (B, N, Da) audio tokens (the inverse of `audio_frames`)."""
        return rearrange(feats, "b (n k) f -> b n (k f)", k=self.stft_per_token)

    def magnitudes(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, K, bins) STFT magnitudes, K = S / hop, frame k centred in hop cell k."""
        if audio.shape[-1] % self.hop:
            raise ValueError(f"audio length {audio.shape[-1]} is not a multiple of the hop {self.hop}")
        delayed = F.pad(audio, (self.delay, self.hop - self.delay))  # (B, S + hop)
        stft = torch.stft(delayed, self.cfg.n_fft, self.hop, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)  # (B, bins, K + 2)
        return rearrange(stft.abs()[..., 1:-1], "b f k -> b k f")  # (B, K, bins)

    def waveform(self, mags: torch.Tensor, num_samples: int, n_iter: int | None = None) -> torch.Tensor:
        """(B, K, bins) magnitudes -> (B, num_samples) audio by Griffin-Lim (the inverse of `magnitudes`),
        with `n_iter` iterations (None: the codec's `griffin_lim_iters`)."""
        spec = F.pad(rearrange(mags, "b k f -> b f k"), (1, 1))  # (B, bins, K + 2): silent dropped frames
        c = self.cfg
        delayed = torchaudio.functional.griffinlim(  # (B, S + hop); zero initial phase: no RNG
            spec.float(), self.window, c.n_fft, self.hop, c.n_fft, power=1.0, n_iter=n_iter or c.griffin_lim_iters,
            momentum=c.griffin_lim_momentum, length=num_samples + self.hop, rand_init=False)
        return delayed[:, self.delay: self.delay + num_samples]  # (B, S)

    def compress(self, mags: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        feats = mags @ self.mel_fb if c.n_mels else mags  # (B, K, bins | mels)
        return (feats.clamp_min(0).pow(c.power) - c.audio_offset) / c.audio_scale

    def expand(self, feats: torch.Tensor) -> torch.Tensor:
        """Inverse of `compress` (mel bands go back to bins through the filterbank's pseudo-inverse)."""
        c = self.cfg
        mags = (feats * c.audio_scale + c.audio_offset).clamp_min(0).pow(1.0 / c.power)
        return (mags @ self.mel_pinv).clamp_min(0) if c.n_mels else mags

    # ------------------------------------------------------------------ the public pair
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, C) in [0, 1] -> (B, N, Dv) in [-1, 1]."""
        s = self.spec
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (s.height, s.width, s.channels):
            raise ValueError(f"expected frames (B, T, {s.height}, {s.width}, {s.channels}), got {tuple(frames.shape)}")
        return rearrange(frames.float() * 2 - 1, "b (n f) h w c -> b n (f h w c)", f=self.cfg.frames_per_token)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) with S a whole number of tokens -> (B, N, Da)."""
        c = self.cfg
        samples_per_token = c.frames_per_token * self.spec.samples_per_frame
        if audio.ndim != 2 or audio.shape[1] % samples_per_token:
            raise ValueError(f"expected audio (B, S) with S a multiple of {samples_per_token}, got {tuple(audio.shape)}")
        return self.audio_tokens(self.compress(self.magnitudes(audio.float())))  # (B, N, Da)

    def encode(self, frames: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """frames (B, T, H, W, C) in [0, 1], audio (B, S) -> {video: (B, N, Dv), audio: (B, N, Da)}."""
        if audio.ndim != 2 or frames.ndim != 5 or audio.shape[1] != frames.shape[1] * self.spec.samples_per_frame:
            raise ValueError(f"frames {tuple(frames.shape)} and audio {tuple(audio.shape)} do not cover the "
                             f"same time ({self.spec.samples_per_frame} samples per frame)")
        return {"video": self.encode_video(frames), "audio": self.encode_audio(audio)}

    def decode_video(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.spec
        frames = rearrange(tokens.float(), "b n (f h w c) -> b (n f) h w c", f=self.cfg.frames_per_token,
                           h=s.height, w=s.width, c=s.channels)
        return ((frames + 1) / 2).clamp(0, 1)  # (B, T, H, W, C)

    def decode_audio(self, tokens: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
        """(B, N, Da) -> (B, S); `n_iter` Griffin-Lim iterations (None: the codec's)."""
        c = self.cfg
        feats = self.audio_frames(tokens.float())  # (B, K, Fa)
        num_samples = tokens.shape[1] * c.frames_per_token * self.spec.samples_per_frame
        wave = self.waveform(self.expand(feats), num_samples, n_iter)  # (B, S)
        # tokens far outside the data's range (extreme guidance) can exceed full scale: such a clip is
        # scaled down to peak 1 as a whole (no clipping distortion); any other clip is left untouched
        return wave / wave.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)

    def decode(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """{video, audio} tokens -> (frames (B, T, H, W, C) in [0, 1], audio (B, S))."""
        return self.decode_video(tokens["video"]), self.decode_audio(tokens["audio"])
