"""Fitting the spectral-detail postfilter (`avgen.model.postfilter`) for a set of weights: real training
clips against clips the weights generate at the default settings, in the codec's audio features
(`avgen postfilter --weights DIR`)."""
from __future__ import annotations

import numpy as np
import torch

from avgen.api.generate import sampling_kwargs
from avgen.api.settings import GenerateSettings
from avgen.data import make_dataset
from avgen.model.postfilter import PostfilterConfig, SpectralPostfilter, band_means, fit_gains


def fit_postfilter(pipe, n: int = 160, seed: int = 1000, batch: int = 8, data_root=None,
                   cfg: PostfilterConfig = PostfilterConfig(), log=print) -> SpectralPostfilter:
    """Fit a postfilter for the weights in `pipe`: n real training clips against n clips the model makes
    from random training prompts (seed `seed` + i for clip i) at the default settings, postfilter off.
    `cfg` gives the width, smoothing, loud-frame range and the strength to store with the gains."""
    codec = pipe.codec
    if codec.cfg.n_mels:
        raise ValueError("the postfilter is fitted on linear-frequency STFT bins; these weights use mel bands")
    if n < 2 or batch < 1:
        raise ValueError(f"fitting needs n >= 2 clips and batch >= 1, got n={n}, batch={batch}")
    frames = lambda tokens: codec.audio_frames(tokens.float().cpu())  # noqa: E731
    ds = make_dataset("talking-digits", split="train", seed=7, data_root=data_root, spec=codec.spec)
    real = torch.cat([frames(codec.encode_audio(torch.as_tensor(ds[i].audio)[None].to(pipe.device)))
                      for i in range(n)])
    rng = np.random.default_rng(seed)
    prompts = [" ".join(ds.random_labels(rng)) for _ in range(n)]
    d = GenerateSettings().check()  # the defaults generation uses; output_type="latent": no postfilter
    pipe.set_sampler(d.sampler)
    generated = []
    for start in range(0, n, batch):
        chunk = prompts[start:start + batch]
        gens = [torch.Generator("cpu").manual_seed(seed + start + j) for j in range(len(chunk))]
        out = pipe(chunk, generator=gens, output_type="latent", **sampling_kwargs(d))
        generated.append(frames(out.audio))
        log(f"generated {start + len(chunk)}/{n}")
    gains, ratio = fit_gains(real, torch.cat(generated), cfg)
    spec = codec.spec
    fit = {"real_clips": f"talking-digits train, seed 7, clips 0-{n - 1}",
           "generated_clips": f"{n} random train prompts (rng seed {seed}), seeds {seed}-{seed + n - 1}, default "
                              f"settings ({d.sampler}, steps {d.steps}, guidance {d.guidance_scale:g}, interval "
                              f"{list(d.guidance_interval)}), postfilter off",
           "variance_ratio_real_over_generated": band_means(ratio, spec.sample_rate, codec.cfg.n_fft),
           "gains": band_means(gains, spec.sample_rate, codec.cfg.n_fft)}
    return SpectralPostfilter(gains, PostfilterConfig(cfg.width, cfg.smooth, cfg.active_range, cfg.strength, fit))


__all__ = ["fit_postfilter"]
