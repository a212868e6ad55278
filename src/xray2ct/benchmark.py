"""Benchmark suites behind `xray2ct benchmark`: timing with warm-up and repeats, results as
markdown tables written into their own section of docs/BENCHMARKS.md.

Only torch/numpy at import time so the suites run on a GPU machine without MONAI/nibabel.
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass
class Timing:
    median_ms: float
    iqr_ms: float  # spread: interquartile range of the repeats
    repeats: int

    def __str__(self) -> str:
        return f"{self.median_ms:.1f} ± {self.iqr_ms / 2:.1f}"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str = "cpu", warmup: int = 2, repeats: int = 5,
            max_seconds: float = 20.0) -> Timing:
    """Median and IQR wall time of fn() in ms after warm-up; stops early past max_seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 2 or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(statistics.median(times), q[2] - q[0], len(times))


def machine_line(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        what = torch.cuda.get_device_name()
    else:
        what = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{what}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- suites ---------------------------------------------------------------------
def projector_suite(device: str = "cpu", sizes=(64, 128, 256), det: int = 256, quick: bool = False) -> str:
    """Both views of an N³ volume onto det² detectors, forward and forward+backward."""
    from xray2ct import Geometry, project

    rows = []
    for n in sizes:
        g = Geometry(volume_shape=(n, n, n), voxel_mm=320.0 / n, det_shape=(det, det))
        mu = (torch.rand(1, 1, n, n, n, device=device) * 0.02).requires_grad_(True)
        reps = 2 if quick else 5
        with torch.no_grad():
            fwd = time_fn(lambda: project(mu, g), device, warmup=1, repeats=reps)
        both = time_fn(lambda: project(mu, g).sum().backward(), device, warmup=1, repeats=reps)
        rows.append([f"{n}³ → 2×{det}²", str(fwd), str(both)])
    return table(["volume → detectors", "forward ms", "forward+backward ms"], rows)


def data_suite(size: int = 64, n: int = 5) -> str:
    """Phantom generation speed (one process)."""
    from xray2ct.data.phantoms import chest_phantom

    t = time_fn(lambda: chest_phantom(size=size, seed=1), warmup=1, repeats=n)
    return table(["phantom size", "ms per phantom", "phantoms / s"],
                 [[f"{size}³", str(t), f"{1e3 / t.median_ms:.1f}"]])


SUITES = {"projector": projector_suite, "data": data_suite}


def write_section(path: str | os.PathLike, suite: str, body: str, command: str, device: str) -> None:
    """Replace (or append) the suite's section in a markdown file, atomically."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery table names the command and machine that produced it.\n"
    start, end = f"<!-- suite:{suite}:{device} -->", f"<!-- /suite:{suite}:{device} -->"
    section = (f"{start}\n## {suite} ({device})\n\nCommand: `{command}`  \nMachine: {machine_line(device)}\n\n"
               f"{body}\n{end}")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
