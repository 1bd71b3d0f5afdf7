"""AVCodec: token layout, time alignment of audio frames, and the cost of the audio round trip."""
import math

import numpy as np
import pytest
import torch

from avgen.data.clip import ClipSpec
from avgen.eval.codec_check import log_spectral_distance, spectral_snr_db
from avgen.model.codec import AVCodec
from avgen.model.config import CODEC_PRESETS, CodecConfig

SPEC = ClipSpec()  # 3 s, 32x32 grey, 16 fps, 8 kHz: 48 tokens, 500 samples per frame, hop 125


@pytest.fixture(scope="module")
def codec():
    return AVCodec(SPEC)


def tone(freq: float, start_s: float = 0.0, end_s: float = SPEC.duration, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(SPEC.num_samples, dtype=torch.float64) / SPEC.sample_rate
    on = ((t >= start_s) & (t < end_s)).double()
    return (amp * on * torch.sin(2 * math.pi * freq * t)).float()[None]  # (1, S)


def test_token_shapes_and_times(codec):
    frames = torch.rand(2, SPEC.num_frames, SPEC.height, SPEC.width, SPEC.channels)
    tokens = codec.encode(frames, torch.randn(2, SPEC.num_samples) * 0.1)
    assert codec.dims == {"video": 32 * 32, "audio": 4 * 129}
    assert tokens["video"].shape == (2, 48, 1024) and tokens["audio"].shape == (2, 48, 516)
    times = codec.token_times()
    assert times.shape == (48,)
    assert torch.allclose(times, (torch.arange(48) + 0.5) / 16)  # centre of each video frame
    out_frames, out_audio = codec.decode(tokens)
    assert out_frames.shape == frames.shape and out_audio.shape == (2, SPEC.num_samples)


def test_video_round_trip_is_exact(codec):
    frames = torch.rand(1, SPEC.num_frames, SPEC.height, SPEC.width, SPEC.channels)
    tokens = codec.encode_video(frames)
    assert tokens.min() >= -1 and tokens.max() <= 1
    assert torch.allclose(codec.decode_video(tokens), frames, atol=1e-6)


@pytest.mark.parametrize("offset", [3, 62, 121])
def test_stft_frame_k_covers_hop_cell_k(codec, offset):
    """A click in hop cell k peaks in STFT frame k, and in the token of the video frame holding it.
    (A plain centred STFT would put a click late in a cell into the next frame.)"""
    for cell in (40, 41, 191):
        audio = torch.zeros(1, SPEC.num_samples)
        sample = cell * codec.hop + offset
        audio[0, sample] = 1.0
        energy = codec.magnitudes(audio)[0].pow(2).sum(-1)  # (K,)
        assert int(energy.argmax()) == cell
        token_energy = codec.encode_audio(audio)[0].sub(codec.encode_audio(torch.zeros_like(audio))[0]).abs().sum(-1)
        assert int(token_energy.argmax()) == sample // SPEC.samples_per_frame


def test_sine_round_trip_error_bounds(codec):
    """A 3-s steady sine is Griffin-Lim's hardest case (phase drifts over a long stationary tone)."""
    audio = tone(440.0)
    out = codec.decode_audio(codec.encode_audio(audio))
    assert spectral_snr_db(codec.magnitudes(audio), codec.magnitudes(out)) > 14.0  # measured 17.2 dB
    spectrum = torch.fft.rfft(out[0]).abs()
    peak_hz = float(spectrum.argmax()) * SPEC.sample_rate / SPEC.num_samples
    # magnitudes pin a steady tone's pitch only to within half an STFT bin (measured: 448 Hz)
    assert abs(peak_hz - 440.0) < 0.5 * SPEC.sample_rate / codec.cfg.n_fft
    assert abs(float(out.pow(2).mean().sqrt() / audio.pow(2).mean().sqrt()) - 1) < 0.1


@pytest.mark.parametrize("freq", [330.0, 523.0])
def test_griffin_lim_output_stays_on_the_clip_clock(codec, freq):
    """A tone burst from 1.0 s to 1.5 s comes back in place: its centre within 4 ms (the STFT
    alignment delay, if not undone, would move it by 7.9 ms), each edge within 10 ms."""
    out = codec.decode_audio(codec.encode_audio(tone(freq, 1.0, 1.5)))[0]
    win = SPEC.sample_rate // 1000
    rms = out.reshape(-1, win).pow(2).mean(-1).sqrt()  # 1 ms frames
    loud = torch.nonzero(rms > 0.5 * rms.max()).flatten()
    start, end = float(loud[0]) * 1e-3, float(loud[-1] + 1) * 1e-3
    assert abs(start - 1.0) <= 0.010 and abs(end - 1.5) <= 0.010
    assert abs((start + end) / 2 - 1.25) <= 0.004


def test_decode_is_deterministic(codec):
    tokens = codec.encode_audio(tone(500.0) + 0.01 * torch.randn(1, SPEC.num_samples, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(codec.decode_audio(tokens), codec.decode_audio(tokens))


def test_decoded_sound_never_exceeds_full_scale(codec):
    x = tone(440.0, amp=0.3)
    tokens = codec.encode_audio(x)
    quiet = codec.decode_audio(tokens)
    assert float(quiet.abs().max()) < 1.0
    assert torch.equal(quiet, codec.waveform(codec.expand(tokens.reshape(1, -1, tokens.shape[-1] // 4)), x.shape[1]))
    loud = codec.decode_audio(tokens * 6 + 3)  # far outside the data (what extreme guidance can produce)
    assert torch.isfinite(loud).all() and abs(float(loud.abs().max()) - 1.0) < 1e-6


def test_mel_option_round_trip():
    codec = AVCodec(SPEC, CODEC_PRESETS["mel64"])
    audio = tone(440.0)
    tokens = codec.encode_audio(audio)
    assert tokens.shape == (1, 48, 4 * 64) and codec.dims["audio"] == 256
    out = codec.decode_audio(tokens)
    assert spectral_snr_db(codec.magnitudes(audio), codec.magnitudes(out)) > 8.0


def test_frames_per_token_groups_frames():
    codec = AVCodec(SPEC, CodecConfig(frames_per_token=2))
    frames = torch.rand(1, SPEC.num_frames, SPEC.height, SPEC.width, SPEC.channels)
    tokens = codec.encode(frames, torch.zeros(1, SPEC.num_samples))
    assert tokens["video"].shape == (1, 24, 2048) and tokens["audio"].shape == (1, 24, 2 * 516)
    assert torch.allclose(codec.token_times(), (torch.arange(24) + 0.5) * 2 / 16)
    assert torch.allclose(codec.decode_video(tokens["video"]), frames, atol=1e-6)
    # audio tokens <-> one row per STFT frame, in time order (what the postfilter works on)
    audio = tone(440.0, 1.0, 2.0)
    rows = codec.audio_frames(codec.encode_audio(audio))
    assert rows.shape == (1, 48 * 4, 129) and torch.equal(rows, codec.compress(codec.magnitudes(audio)))
    assert torch.equal(codec.audio_tokens(rows), codec.encode_audio(audio))


def test_bad_inputs_raise(codec):
    with pytest.raises(ValueError, match=r"do not cover the same time \(500 samples per frame\)"):
        codec.encode(torch.rand(1, 48, 32, 32, 1), torch.zeros(1, 1000))
    with pytest.raises(ValueError, match=r"expected frames \(B, T, 32, 32, 1\), got \(1, 48, 16, 16, 1\)"):
        codec.encode_video(torch.rand(1, 48, 16, 16, 1))
    with pytest.raises(ValueError, match="samples_per_frame 501 is not divisible by stft_per_frame 4"):
        AVCodec(ClipSpec(fps=16, sample_rate=8016))  # 501 samples per frame: no integer hop
    with pytest.raises(ValueError, match=r"unknown CodecConfig option\(s\) \['bogus'\]"):
        CodecConfig.from_dict({"n_fft": 256, "bogus": 1})


@pytest.mark.data
def test_talking_digits_round_trip_cost(data_root):
    from avgen.data import make_dataset
    ds = make_dataset("talking-digits", split="test", data_root=data_root)
    codec = AVCodec(ds.spec)
    audio = torch.from_numpy(np.stack([ds[i].audio for i in range(8)]))
    out = codec.decode_audio(codec.encode_audio(audio))
    ref, est = codec.magnitudes(audio), codec.magnitudes(out)
    # measured: 30.5 dB and 1.58 dB over 32 clips (64 Griffin-Lim iterations)
    assert spectral_snr_db(ref, est) > 25.0
    assert log_spectral_distance(ref, est) < 2.2


def test_shapes_tones_round_trip_cost():
    from avgen.data import make_dataset
    ds = make_dataset("shapes", split="test")
    codec = AVCodec(ds.spec)
    audio = torch.from_numpy(np.stack([ds[i].audio for i in range(8)]))
    ref = codec.magnitudes(audio)
    est = codec.magnitudes(codec.decode_audio(codec.encode_audio(audio)))
    assert spectral_snr_db(ref, est) > 22.0  # measured 26.7 dB on 16 clips
    assert log_spectral_distance(ref, est) < 4.0  # measured 3.3 dB


@pytest.mark.data
def test_the_speech_judge_reads_codec_audio_as_well_as_the_original(data_root):
    from avgen.data import make_dataset
    from avgen.eval.codec_check import judge_accuracy

    ds = make_dataset("talking-digits", split="test", data_root=data_root)
    clips = [ds[i] for i in range(6)]
    codec = AVCodec(ds.spec)
    out = codec.decode_audio(codec.encode_audio(torch.from_numpy(np.stack([c.audio for c in clips]))))
    acc = judge_accuracy(clips, out.numpy())
    # measured on 32 clips (60 digits): 98.3% original, 98.3% through the codec
    assert acc["original"] >= 0.9 and acc["reconstructed"] >= acc["original"] - 0.1
