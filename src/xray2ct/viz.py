"""Pictures: three-plane slice views and montages (matplotlib, headless)."""
from __future__ import annotations

import os

import numpy as np

from xray2ct.fileio import atomic_path

PLANES = ("axial", "coronal", "sagittal")
PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}  # the (d, h, w) axis each plane cuts across


def plane_slice(vol: np.ndarray, plane: str, index: int | None = None) -> np.ndarray:
    """A 2D slice of a (D, H, W) volume, oriented as radiologists read it.

    axial (h, w): anterior at the top, patient right on the image's left;
    coronal (d, w) and sagittal (d, h): head at the top (sagittal: anterior on the left).
    """
    axis = PLANE_AXIS[plane]
    index = vol.shape[axis] // 2 if index is None else index
    return np.take(vol, index, axis=axis)


def plane_axes(plane: str) -> tuple[int, int]:
    """The (d, h, w) axes along the rows and the columns of `plane_slice(vol, plane)`."""
    rows, cols = (a for a in range(3) if a != PLANE_AXIS[plane])  # the slice keeps the other two, in order
    return rows, cols


def plane_aspect(spacing, plane: str) -> float:
    """Height / width of one pixel of `plane_slice(vol, plane)` for voxel spacing (d, h, w) in mm:
    matplotlib's imshow aspect, so that an anisotropic volume is not drawn stretched."""
    rows, cols = plane_axes(plane)
    return float(spacing[rows]) / float(spacing[cols])


# The patient's side at the start and at the end of each volume axis (d, h, w): superior/inferior,
# anterior/posterior, right/left.
AXIS_SIDES = (("S", "I"), ("A", "P"), ("R", "L"))


def orientation_labels(plane: str) -> dict[str, str]:
    """The patient's side at each edge of `plane_slice(vol, plane)` ({"top", "bottom", "left",
    "right"} -> "S"/"I"/"A"/"P"/"R"/"L"): the letters a viewer writes on the slice's edges."""
    rows, cols = plane_axes(plane)
    return {"top": AXIS_SIDES[rows][0], "bottom": AXIS_SIDES[rows][1],
            "left": AXIS_SIDES[cols][0], "right": AXIS_SIDES[cols][1]}


# A radiograph shows the patient's sides as a slice of this plane does (DESIGN: PA columns follow w,
# patient right on the left; lateral columns follow h, anterior on the left; rows follow d in both).
XRAY_PLANE = {"PA": "coronal", "lateral": "sagittal"}


def draw_sides(rgb: np.ndarray, sides: dict[str, str]) -> np.ndarray:
    """An RGB uint8 image with the patient's side letters (`orientation_labels`) written at its
    edges, yellow with a dark outline as the report's viewer writes them, readable on any grey."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    w, h = img.size
    size = max(10, min(w, h) // 14)
    font, m = ImageFont.load_default(size=size), size // 3
    at = {"top": ((w / 2, m), "mt"), "bottom": ((w / 2, h - m), "md"), "left": ((m, h / 2), "lm"),
          "right": ((w - m, h / 2), "rm")}
    draw = ImageDraw.Draw(img)
    for edge, letter in sides.items():
        xy, anchor = at[edge]
        draw.text(xy, letter, fill=(255, 213, 74), font=font, anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(img)


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Tight layout, PNG written atomically, figure closed."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)


def uncertainty_scale(std_hu: np.ndarray) -> float:
    """Top of the colour scale for a std volume: its 99th percentile (a few hot voxels at
    edges would otherwise wash the rest out), or 1 HU for an all-zero volume."""
    return float(np.percentile(std_hu, 99)) or 1.0


# Where each edge's letter sits, in axes fractions, and its alignment.
_EDGE_TEXT = {"top": (0.5, 0.97, "center", "top"), "bottom": (0.5, 0.03, "center", "bottom"),
              "left": (0.03, 0.5, "left", "center"), "right": (0.97, 0.5, "right", "center")}


def _write_sides(ax, sides: dict[str, str]) -> None:
    """The patient's side letters at a panel's edges, yellow outlined in black as `draw_sides`."""
    from matplotlib import patheffects

    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    for edge, letter in sides.items():
        x, y, ha, va = _EDGE_TEXT[edge]
        ax.text(x, y, letter, transform=ax.transAxes, ha=ha, va=va, color="#ffd54a", fontsize=9,
                fontweight="bold", path_effects=outline)


def save_montage(path: str | os.PathLike, panels: list[dict], ncols: int = 3, title: str | None = None,
                 colorbar_label: str | None = None, dpi: int = 110) -> None:
    """Grid of images. Each panel: {"image": 2D array, "title": str, "cmap": str, "vmin", "vmax",
    "aspect": pixel height / width (default 1), "sides": `orientation_labels(plane)` to write
    the patient's sides (R/L, A/P, S/I) at the edges}."""
    nrows = -(-len(panels) // ncols)
    fig, axes = pyplot().subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, p in zip(axes.flat, panels):
        im = ax.imshow(p["image"], cmap=p.get("cmap", "gray"), vmin=p.get("vmin"), vmax=p.get("vmax"),
                       aspect=p.get("aspect", 1.0))
        if p.get("sides"):
            _write_sides(ax, p["sides"])
        ax.set_title(p.get("title", ""), fontsize=9)
        if p.get("colorbar"):
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(colorbar_label or "", fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path, dpi)


def ct_and_drr_montage(path, hu: np.ndarray, pa: np.ndarray, lat: np.ndarray, title: str | None = None) -> None:
    """PA and lateral DRRs beside axial/coronal/sagittal CT slices (HU, soft-tissue-to-bone window)."""
    panels = [{"image": pa, "title": "PA DRR"}, {"image": lat, "title": "lateral DRR"}, {"image": None}]
    panels = [{**panels[0], "sides": orientation_labels(XRAY_PLANE["PA"])},
              {**panels[1], "sides": orientation_labels(XRAY_PLANE["lateral"])}] + [
        {"image": plane_slice(hu, p), "title": f"CT {p}", "vmin": -1000, "vmax": 1000, "colorbar": p == "sagittal",
         "sides": orientation_labels(p)}
        for p in PLANES
    ]
    save_montage(path, panels, ncols=5, title=title, colorbar_label="HU")


def plot_learning_curve(runs: str | os.PathLike | dict[str, str | os.PathLike], path: str | os.PathLike,
                        title: str | None = None) -> None:
    """Validation PSNR and 3D SSIM against training time (minutes), else step, from the
    metrics.csv of one run, or of several as {label: metrics.csv} (one line each)."""
    import csv

    runs = runs if isinstance(runs, dict) else {"": runs}
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 3.4))
    for label, metrics_csv in runs.items():
        with open(metrics_csv, newline="") as f:
            rows = list(csv.DictReader(f))
        timed = bool(rows) and "elapsed_s" in rows[0]
        x = [float(r["elapsed_s"]) / 60 if timed else float(r["step"]) for r in rows]
        for ax, key, ylabel in ((axes[0], "psnr", "val PSNR (dB)"), (axes[1], "ssim3d", "val 3D SSIM")):
            ax.plot(x, [float(r[key]) for r in rows], marker="o", ms=3, label=label or None)
            ax.set_xlabel("training time (min)" if timed else "step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


# Display windows (centre, width) in HU, the usual radiology presets.
WINDOWS = {"lung": (-600.0, 1500.0), "soft tissue": (40.0, 400.0), "bone": (400.0, 1800.0)}


def apply_window(hu: np.ndarray, window: str | tuple[float, float]) -> np.ndarray:
    """HU image -> grey in [0, 1] through a named preset or a (centre, width) window."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; valid: {', '.join(WINDOWS)}")
        window = WINDOWS[window]
    centre, width = window
    return np.clip((np.asarray(hu, dtype=np.float32) - (centre - width / 2)) / width, 0.0, 1.0)


def slice_rgb(hu: np.ndarray, plane: str, index: int | None = None, window: str | tuple = "soft tissue",
              std_hu: np.ndarray | None = None, overlay_alpha: float = 0.5, std_max: float | None = None) -> np.ndarray:
    """One plane of a (D, H, W) HU volume as an RGB uint8 image (oriented as `plane_slice`),
    optionally with the uncertainty (std, HU) blended over it in a heat colour map."""
    grey = apply_window(plane_slice(hu, plane, index), window)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if std_hu is not None:
        from matplotlib import colormaps

        std = plane_slice(std_hu, plane, index)
        top = std_max if std_max else uncertainty_scale(std_hu)
        heat = colormaps["inferno"](np.clip(std / top, 0, 1))[..., :3]
        rgb = (1 - overlay_alpha) * rgb + overlay_alpha * heat
    return (rgb * 255 + 0.5).astype(np.uint8)
