"""The training pool's generation (`data.fields.phantom_pool`) in one process and in two, in
one run: the ratio says what `data.acquisition.pool_workers` buys on this machine.

    python benchmarks/pool_workers.py [--n 30] [--version 5]

Wide phantoms as `configs/cpu-default.json` draws them (32³ and an 8-voxel margin), into a
temporary folder. The spawned processes' start-up is in the time, so a 2000-phantom pool gains
more than a short run shows.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(n: int = 30, version: int = 5) -> dict[int, float]:
    from xray2ct.data.fields import phantom_pool

    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            t0 = time.perf_counter()
            phantom_pool(Path(tmp) / f"w{workers}", n=n, size=32, margin=8, seed=3, version=version, workers=workers)
            seconds[workers] = time.perf_counter() - t0
    for workers, s in seconds.items():
        print(f"{workers} process(es): {s:.1f} s, {n / s:.2f} phantoms/s")
    print(f"speed-up {seconds[1] / seconds[2]:.2f}x")
    return seconds


if __name__ == "__main__":  # the pool's processes are spawned: they import this module again
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30, help="phantoms per run")
    ap.add_argument("--version", type=int, default=5, help="phantom generator")
    args = ap.parse_args()
    main(args.n, args.version)
