"""The projector as separable matmuls against its grid_sample formulation, interleaved in one
run (the machine is shared: ratios, not absolute times, are the result).

    .venv/bin/python benchmarks/bench_projector_separable.py
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_projector import _grid_sample_view  # noqa: E402  the reference formulation, kept in the tests

from xray2ct.geometry import Geometry  # noqa: E402
from xray2ct.physics.projector import project_view  # noqa: E402


def timed(fn, repeats: int = 10) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| volume / detector | pass | grid_sample ms | separable ms | speed-up |")
    print("|---|---|---|---|---|")
    for n, det in ((32, 128), (64, 256)):
        g = Geometry(volume_shape=(n,) * 3, voxel_mm=320 / n, det_shape=(det, det))
        mu = torch.rand(1, 1, n, n, n, requires_grad=True)
        passes = {"forward": lambda f: (lambda: f(mu.detach(), g, "pa")),
                  "forward + backward": lambda f: (lambda: f(mu, g, "pa").sum().backward())}
        for name, make in passes.items():
            old, new = [], []
            for _ in range(3):  # interleaved rounds
                old.append(timed(make(_grid_sample_view)))
                new.append(timed(make(project_view)))
            o, s = min(old), min(new)
            print(f"| {n}³ / {det}² | {name} | {o:.1f} | {s:.1f} | {o / s:.1f}x |")


if __name__ == "__main__":
    main()
