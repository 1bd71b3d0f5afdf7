"""Distribution distances in the judges' feature spaces, and bootstrap intervals.

Frechet distance between Gaussians fitted to two feature sets (FID / FVD / FAD's formula),
and KID (Binkowski et al. 2018: unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged
over subsets). Frechet is biased upwards by roughly tr(cov) * d / N, so a number means
something only next to a real-vs-real floor computed at the same N and dimension:
`floor()` draws two disjoint real sets of N from a pool, repeatedly, and reports the mean
and spread.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """|mu_x - mu_y|^2 + tr(Sx + Sy - 2 (Sx^1/2 Sy Sx^1/2)^1/2) for (N, d) feature sets.

    The matrix square root goes through a symmetric eigen-decomposition, which stays real and
    stable where scipy.linalg.sqrtm of the non-symmetric product can return complex noise.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    mu = x.mean(0) - y.mean(0)
    sx, sy = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    root_x = psd_sqrt(sx)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_x @ sy @ root_x), 0, None)).sum()
    return float(mu @ mu + np.trace(sx) + np.trace(sy) - 2 * cross)


def psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(x: np.ndarray, y: np.ndarray, subset_size: int = 100, n_subsets: int = 50, seed: int = 0) -> float:
    """Kernel Inception Distance analogue: mean unbiased MMD^2 over random subsets."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    return float(np.mean([mmd2_unbiased(x[rng.choice(len(x), m, replace=False)],
                                         y[rng.choice(len(y), m, replace=False)]) for _ in range(n_subsets)]))


@dataclass
class Floor:
    """Real-vs-real distances at a given N (clips per set): what a perfect model would score."""

    n: int
    repeats: int
    fd_mean: float
    fd_std: float
    kid_mean: float
    kid_std: float

    def to_json(self) -> dict:
        return asdict(self)


def floor(pool: list[np.ndarray], n: int, repeats: int = 10, seed: int = 0) -> Floor:
    """Two disjoint random sets of `n` items from `pool` (each item: one clip's (k, d) features),
    `repeats` times; FD and KID between them. Needs len(pool) >= 2n."""
    if len(pool) < 2 * n:
        raise ValueError(f"a floor at N={n} needs a pool of at least {2 * n} real clips, got {len(pool)}")
    rng = np.random.default_rng(seed)
    fds, kids = [], []
    for r in range(repeats):
        order = rng.permutation(len(pool))
        a, b = stack(pool, order[:n]), stack(pool, order[n:2 * n])
        fds.append(frechet_distance(a, b))
        kids.append(kid(a, b, seed=seed + r))
    return Floor(n, repeats, float(np.mean(fds)), float(np.std(fds)), float(np.mean(kids)), float(np.std(kids)))


def stack(pool: list[np.ndarray], idx) -> np.ndarray:
    """Per-clip feature arrays -> one (sum k, d) set."""
    return np.concatenate([pool[i] for i in idx], axis=0)


def bootstrap_ci(values, stat: Callable[[np.ndarray], float] = np.mean, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` over resampled items (NaNs dropped first).

    `values` may be (N,) numbers or (N, k) rows (e.g. correct / total per clip for a pooled
    accuracy, with `stat` doing the pooling)."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v).any(axis=1)] if v.ndim == 2 else v[~np.isnan(v)]
    if len(v) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    boots = np.array([stat(v[rng.integers(0, len(v), len(v))]) for _ in range(n_boot)])
    boots = boots[~np.isnan(boots)]
    if not len(boots):
        return (math.nan, math.nan)
    alpha = (1 - level) / 2
    return float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))
