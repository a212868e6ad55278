"""Figures of the benchmark suites (matplotlib, headless), drawn from the numbers of the
same run that produced the tables; written atomically."""
from __future__ import annotations

import os

from xray2ct.viz import pyplot, save_figure


def plot_attention_speed(times_ms: dict[str, dict[int, float]], path: str | os.PathLike, title: str = "") -> None:
    """Log-log fwd+bwd time against token count, one line per attention variant.

    times_ms: variant -> {tokens: median ms}.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, by_tokens in times_ms.items():
        tokens = sorted(by_tokens)
        ax.plot(tokens, [by_tokens[t] for t in tokens], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # plain numbers at the measured token counts instead of 10^k labels
    from matplotlib.ticker import FuncFormatter, NullFormatter

    tokens = sorted({t for by_tokens in times_ms.values() for t in by_tokens})
    ax.set_xticks(tokens, [f"{t:,}" for t in tokens])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("tokens")
    ax.set_ylabel("forward + backward (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def plot_quality_tradeoff(points: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Test PSNR (95% CI error bars) against train-step time, one labelled point per variant.

    points: {"name", "step_ms", "psnr", "ci95": [lo, hi] or None}.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    # labels of points that bunch together alternate above and below, so they do not overlap
    ordered = sorted(points, key=lambda q: q["step_ms"])
    offsets = {q["name"]: (5, 6 if i % 2 == 0 else -12) for i, q in enumerate(ordered)}
    for p in points:
        ci = p.get("ci95")
        err = [[p["psnr"] - ci[0]], [ci[1] - p["psnr"]]] if ci else None
        highlight = p["name"] in ("optimized", "baseline")
        ax.errorbar(p["step_ms"], p["psnr"], yerr=err, fmt="s" if highlight else "o", capsize=3,
                    color="C3" if p["name"] == "optimized" else ("C0" if p["name"] == "baseline" else "C7"))
        ax.annotate(p["name"], (p["step_ms"], p["psnr"]), textcoords="offset points", xytext=offsets[p["name"]],
                    fontsize=8)
    ax.margins(x=0.15)  # room for the labels of the outermost points
    ax.set_xlabel("train step (ms, median)")
    ax.set_ylabel("test PSNR (dB), mean ± 95% CI")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    save_figure(fig, path)
