"""Timing helpers shared by the benchmark suites and the quality benchmark: wall time of a
callable with warm-up and repeats (median and IQR), round-robin timing of variants, and the
markdown table the numbers are reported in.

Only torch at import time, so any module may use them without pulling in the suites.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Timing:
    median_ms: float
    iqr_ms: float  # spread: interquartile range of the repeats
    repeats: int

    def __str__(self) -> str:
        return f"{self.median_ms:.1f} ± {self.iqr_ms / 2:.1f}"


def summarize(times_ms: list[float]) -> Timing:
    """Median and interquartile range of repeat times (ms)."""
    q = statistics.quantiles(times_ms, n=4) if len(times_ms) >= 2 else [times_ms[0]] * 3
    return Timing(statistics.median(times_ms), q[2] - q[0], len(times_ms))


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str = "cpu", warmup: int = 2, repeats: int = 5,
            max_seconds: float = 20.0) -> Timing:
    """Median and IQR wall time of fn() in ms after warm-up; stops early past max_seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 2 or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def interleaved(fns: dict[str, Callable[[], object]], device: str, repeats: int,
                rewarm: bool = False) -> dict[str, Timing]:
    """Time several variants round-robin, so load from other processes biases none of them.

    rewarm: run one untimed call at the start of every turn, for variants (whole models)
    whose oneDNN primitives and allocator blocks the other turns evict, which a training
    run, stepping one model only, keeps warm.
    """
    for fn in fns.values():
        fn()  # warm-up: allocation, oneDNN primitive creation
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if rewarm:
                fn()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: summarize(ts) for name, ts in times.items()}


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
