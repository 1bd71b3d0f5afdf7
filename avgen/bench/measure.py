"""The machine's ceiling (the best dense matmul rate), FLOP counting and peak memory."""
from __future__ import annotations

import math
import os
import threading
import time

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode


def gemm_gflops(device: torch.device, sizes, repeats: int = 3) -> dict:
    """Best dense matmul rate over square sizes: fp32 on CPU, bf16 on CUDA (each device's fast path)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        inner = max(1, int(2e9 / (2 * n ** 3)))  # ~2 GFLOP per timing, enough to dwarf timer noise
        a @ b
        best = math.inf
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                a @ b
            sync(device)
            best = min(best, (time.perf_counter() - t0) / inner)
        rates[n] = 2 * n ** 3 / best / 1e9
    return {"gemm_gflops": max(rates.values()), "gemm_by_size": {str(k): round(v, 1) for k, v in rates.items()},
            "gemm_dtype": str(dtype).replace("torch.", "")}


class count_flops:
    """FlopCounterMode with parameters frozen for the count: its module hooks assert on a leaf that
    requires grad when a block receives one as an argument (no autograd graph is needed to count)."""

    def __init__(self, module: torch.nn.Module):
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)
        self._nograd, self._fc = torch.no_grad(), FlopCounterMode(display=False)
        self._nograd.__enter__()
        self._fc.__enter__()
        return self

    def __exit__(self, *exc):
        self._fc.__exit__(*exc)
        self._nograd.__exit__(*exc)
        for p in self.params:
            p.requires_grad_(True)
        self.flops = float(self._fc.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak resident memory while the block runs (CPU: sampled RSS; CUDA: the allocator's peak)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        proc, self._stop = psutil.Process(os.getpid()), threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2 ** 20)
                self._stop.wait(0.005)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self._stop.set()
            self._thread.join()
