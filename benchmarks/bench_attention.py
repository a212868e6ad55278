"""Forward+backward time of the attention variants on CPU, as a markdown table.

    python benchmarks/bench_attention.py            # 512 and 4096 tokens (8^3, 16^3 grids)
    python benchmarks/bench_attention.py --big      # also 32768 tokens (32^3)
    python benchmarks/bench_attention.py --kernels  # also the single-head kernel choice

Times are the median of --repeats fwd+bwd passes after one warm-up, width 256, 8 heads,
key_dim 16, kv_pool 2 (the ModelConfig defaults). Ratios are MHSA time / variant time
(> 1 = faster than MHSA).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from xray2ct.benchmark import components_suite


def time_fwd_bwd(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    """Median seconds of fn() + backward, after one warm-up pass."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        fn().float().sum().backward()
        if i:  # the first pass pays one-time allocation / oneDNN primitive creation
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_kernels(n: int, batch: int, repeats: int, key_dim: int = 16, d_v: int = 32) -> str:
    """One CGA head's attention (q, k: key_dim; v: d_v) three ways."""
    q, k = torch.randn(batch, 1, n, key_dim), torch.randn(batch, 1, n, key_dim)
    v = torch.randn(batch, 1, n, d_v)
    scale = key_dim**-0.5

    def leaf(*ts):
        return [t.detach().requires_grad_() for t in ts]

    def sdpa_mismatched():
        a, b, c = leaf(q, k, v)
        return F.scaled_dot_product_attention(a, b, c, scale=scale)

    def sdpa_padded():
        a, b, c = leaf(q, k, v)
        pad = (0, d_v - key_dim)
        return F.scaled_dot_product_attention(F.pad(a, pad), F.pad(b, pad), c, scale=scale)

    def explicit():
        a, b, c = leaf(q, k, v)
        return torch.softmax(a @ b.transpose(-1, -2) * scale, dim=-1) @ c

    rows = [f"| one head, N={n} | fwd+bwd ms |", "|---|---|"]
    options = (
        ("SDPA, dk=16 dv=32", sdpa_mismatched),
        ("SDPA, q/k zero-padded to 32", sdpa_padded),
        ("explicit softmax(QKᵀ)V", explicit),
    )
    for name, fn in options:
        rows.append(f"| {name} | {time_fwd_bwd(fn, repeats) * 1e3:.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--big", action="store_true", help="also 32768 tokens (32^3 grid)")
    parser.add_argument(
        "--kernels", action="store_true", help="also time the single-head kernel options"
    )
    parser.add_argument("--batch", type=int, default=1, help="batch of the --kernels timings")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grids = [8, 16] + ([32] if args.big else [])
    print(
        f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, "
        f"width 256, 8 heads, median of {args.repeats}\n"
    )
    print(components_suite("cpu", grids=tuple(grids), dim=256, heads=8, repeats=args.repeats))
    if args.kernels:
        print()
        print(bench_kernels(16**3, args.batch, args.repeats))


if __name__ == "__main__":
    main()
