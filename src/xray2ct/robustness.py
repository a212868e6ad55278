"""The `robustness` suite of `xray2ct benchmark`: how the model fares on films taken at real
acquisitions, reconstructed with the acquisition known (`xray2ct.acquisition`: the lifting
and the detector follow the study's geometry) and with the training geometry assumed.

Held-out phantoms (`refine_suite.fresh_cases`, their own seeds) give the reference: the
model's PSNR/SSIM on DRRs rendered at its training geometry ("nominal"). Each grid point
renders the same phantoms with the public API (`xray2ct.Geometry`, `xray2ct.project`) on a
256² detector, stores them as 16-bit as a film file would be, and loads them as the model
sees them (`data.xrayio.prepare_xray`). The grid: source–detector 1000 / 1500 / 1800 mm
(patient centre 150 mm from the detector) with a 430 mm detector and with one just
covering the volume; at each, the patient centred, shifted ±20 mm to the side, turned ±3°
about the vertical axis, and an AP instead of a PA frontal film.

What "known" knows is what an acquisition record holds — distances, pitch, PA or AP — not
where the patient stood or how they were turned: shifts and rotations are unknown to both
columns and measure robustness, not geometry. The volumes are the network's; with `refine`,
each known-geometry volume is also refined with the model's settings and the known geometry,
case by case, as `reconstruct` does by default (including its rule that skips films showing
matter beyond the field).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xray2ct.timing import table

log = logging.getLogger(__name__)

TEST_SEED = 9_000_000  # phantom seeds of this suite: apart from refine_suite's and every dataset's
DETECTOR_PX = 256
CASSETTE_MM = 430.0
PATIENT_TO_DETECTOR_MM = 150.0


@dataclass(frozen=True)
class Point:
    """One acquisition of the grid."""

    sdd: float  # source–detector, mm
    detector_mm: float | None  # detector side, mm; None: just covering the volume
    shift_mm: float = 0.0  # patient shifted along w (towards the patient's left), mm
    turn_deg: float = 0.0  # patient turned about the vertical (d) axis, degrees
    frontal: str = "pa"  # "pa" or "ap"

    @property
    def sod(self) -> float:
        return self.sdd - PATIENT_TO_DETECTOR_MM

    def label(self) -> str:
        det = "covering" if self.detector_mm is None else f"{self.detector_mm:g} mm"
        extra = [f"shift {self.shift_mm:+g} mm"] if self.shift_mm else []
        extra += [f"turn {self.turn_deg:+g}°"] if self.turn_deg else []
        extra += ["AP"] if self.frontal == "ap" else []
        return f"{self.sdd:g} mm, {det}" + (f", {', '.join(extra)}" if extra else "")


def grid(quick: bool = False) -> list[Point]:
    distances, detectors = ((1800.0,), (CASSETTE_MM,)) if quick else ((1000.0, 1500.0, 1800.0), (CASSETTE_MM, None))
    variants = [{}, {"shift_mm": 20.0}, {"shift_mm": -20.0}, {"turn_deg": 3.0}, {"turn_deg": -3.0}, {"frontal": "ap"}]
    if quick:
        variants = [{}, {"frontal": "ap"}]
    return [Point(d, det, **v) for d in distances for det in detectors for v in variants]


def positioned(hu: np.ndarray, voxel_mm: float, p: Point) -> np.ndarray:
    """The phantom (HU, d h w) as positioned at `p`: padded with air, shifted, turned."""
    from scipy.ndimage import rotate

    out = hu
    if p.turn_deg:
        out = rotate(out, p.turn_deg, axes=(1, 2), reshape=False, order=1, mode="constant", cval=-1000.0)
    pad = int(round(abs(p.shift_mm) / voxel_mm))
    if pad:
        if abs(pad * voxel_mm - abs(p.shift_mm)) > 1e-6:
            raise ValueError(f"shift {p.shift_mm} mm is not a whole number of {voxel_mm} mm voxels")
        out = np.pad(out, ((0, 0), (0, 0), (pad, pad)), constant_values=-1000.0)  # wider field, the centre stays
        out = np.roll(out, pad if p.shift_mm > 0 else -pad, axis=2)  # the padding's air wraps, nothing else
    return out


def render(hu: np.ndarray, voxel_mm: float, p: Point, nominal) -> tuple[torch.Tensor, float]:
    """-> the two films (2, 256, 256) in [0, 1] as 16-bit files hold them, and the detector pitch, mm."""
    import xray2ct
    from xray2ct.physics.hu import hu_to_mu
    from xray2ct.physics.radiograph import drr_to_radiograph

    views = (p.frontal, "lat")
    if p.detector_mm is None:  # covering the 320 mm cube at this distance, at 256 px
        cube = xray2ct.Geometry(volume_shape=hu.shape, voxel_mm=voxel_mm, source_iso_mm=p.sod,
                                source_det_mm=p.sdd, det_shape=(DETECTOR_PX,) * 2, views=views)
        pitch = cube.det_pixel_mm
    else:
        pitch = p.detector_mm / DETECTOR_PX
    body = positioned(hu, voxel_mm, p)
    g = xray2ct.Geometry(volume_shape=body.shape, voxel_mm=voxel_mm, source_iso_mm=p.sod, source_det_mm=p.sdd,
                         det_shape=(DETECTOR_PX,) * 2, det_pixel_mm=pitch, views=views)
    mu = hu_to_mu(torch.as_tensor(body, dtype=torch.float32))[None, None]
    with torch.no_grad():
        films = drr_to_radiograph(xray2ct.project(mu, g))[0]  # (2, 256, 256)
    return torch.round(films.clamp(0, 1) * 65535) / 65535, pitch


def known_geometry(p: Point, pitch: float, size: int, nominal):
    """The study geometry an acquisition record of `p` gives (distances, pitch, PA/AP)."""
    from xray2ct.acquisition import Acquisition, study_geometry

    setups = {}
    for view, position in ((p.frontal, p.frontal.upper()), ("lat", "LL")):
        acq = Acquisition(position, p.sod, p.sdd, pitch)
        setups[view] = acq.view_setup((DETECTOR_PX,) * 2, (0, 0, 0, 0), size, nominal)
    return study_geometry(nominal, setups)


def point_films(phantoms, voxel_mm: float, p: Point, nominal, xray_size: int) -> tuple[torch.Tensor, float]:
    """Every phantom (HU, d h w) filmed at `p` and read as the model reads a film file ->
    (n, 2, S, S) PA/AP and lateral, and the detector pitch, mm."""
    from xray2ct.data.xrayio import prepare_xray

    xs = []
    for hu in phantoms:
        films, pitch = render(hu, voxel_mm, p, nominal)
        xs.append(torch.stack([prepare_xray(f, size=xray_size) for f in films]))  # (2, S, S)
    return torch.stack(xs), pitch


def refine_each(model, dev, cfg, mu: torch.Tensor, log_var: torch.Tensor, xrays: torch.Tensor, geometry) -> list:
    """Each case of a batch refined on its own, as `reconstruct` refines by default (its skip rule
    for films showing matter beyond the field too): mu, log_var (n, 1, N, N, N), xrays (n, 2, S, S)
    -> n volumes (1, 1, N, N, N)."""
    from xray2ct.engine.refining import refine_placed, refine_skip_reason

    both = (True, True)
    return [m[None] if refine_skip_reason(geometry, both, x[None]) else
            refine_placed(model, dev, x[None], m[None], lv[None], geometry, geometry, both, cfg.refine,
                          cfg.geometry.mu_water)[0].volume
            for m, lv, x in zip(mu, log_var, xrays)]


def measure(checkpoint=None, device: str = "cpu", n: int = 8, quick: bool = False, refine: bool = False) -> dict:
    """One set of weights over the grid: {"checkpoint", "size", "xray_size", "nominal": {"psnr",
    "ssim"}, "points": [{"label", "assumed_psnr", "known_psnr", "assumed_ssim", "known_ssim"}]}
    (per-phantom values); with `refine`, "refined_psnr" in "nominal" and every point too."""
    from tqdm.auto import tqdm

    from xray2ct.data.phantoms import chest_phantom
    from xray2ct.engine.inference import load_for_inference, predict
    from xray2ct.metrics import psnr, ssim3d
    from xray2ct.models.net import using_geometry
    from xray2ct.refine_suite import fresh_cases

    model, cfg, dev = load_for_inference(checkpoint, device)
    size, s = cfg.model.volume_size, cfg.model.xray_img_size
    nominal = cfg.geometry.build(size, s)
    voxel = cfg.geometry.fov_mm / size
    cases = fresh_cases(n, TEST_SEED, size, s)  # nominal films + truth
    phantoms = [np.rint(chest_phantom(size, TEST_SEED + i)) for i in range(n)]  # fresh_cases' phantoms, in HU

    def score(volumes):
        return (np.array([float(psnr(v, t)) for v, (_, t) in zip(volumes, cases)]),
                np.array([float(ssim3d(v, t)) for v, (_, t) in zip(volumes, cases)]))

    def batched(xrays):  # one forward pass for all phantoms: (n, 2, S, S) -> mean, log-variance (n, 1, N, N, N)
        return predict(model, xrays, dev)

    nominal_x = torch.cat([x for x, _ in cases])
    nominal_mu, nominal_log_var = batched(nominal_x)
    ref_psnr, ref_ssim = score(nominal_mu.split(1))
    data = {"checkpoint": str(checkpoint or "bundled weights"), "size": size, "xray_size": s,
            "nominal": {"psnr": ref_psnr.tolist(), "ssim": ref_ssim.tolist()}, "points": []}
    if refine:
        refined = refine_each(model, dev, cfg, nominal_mu, nominal_log_var, nominal_x, nominal)
        data["nominal"]["refined_psnr"] = score(refined)[0].tolist()
    points = grid(quick)
    # a refined run takes about half an hour per set of weights on 2 cores: show where it is
    bar = tqdm(points, desc=f"robustness {Path(str(checkpoint)).name if checkpoint else 'bundled'}",
               unit="acquisition", dynamic_ncols=True)
    for i, p in enumerate(bar):
        x, pitch = point_films(phantoms, voxel, p, nominal, s)  # (n, 2, S, S)
        assumed = batched(x)[0]
        geometry = known_geometry(p, pitch, s, nominal)
        with using_geometry(model, geometry):
            known, known_log_var = batched(x)
        refined_psnr = (score(refine_each(model, dev, cfg, known, known_log_var, x, geometry))[0].tolist()
                        if refine else None)
        (pa, sa), (pk, sk) = score(assumed.split(1)), score(known.split(1))
        log.info("robustness %d/%d %s: PSNR assumed %.2f, known %.2f dB", i + 1, len(points), p.label(),
                 pa.mean(), pk.mean())
        data["points"].append({"label": p.label(), "assumed_psnr": pa.tolist(), "known_psnr": pk.tolist(),
                               "assumed_ssim": sa.tolist(), "known_ssim": sk.tolist()})
        if refine:
            data["points"][-1]["refined_psnr"] = refined_psnr
    return data


def robustness_suite(checkpoint=None, device: str = "cpu", n: int = 8, quick: bool = False,
                     images_dir: str | os.PathLike | None = None, refine: bool = False):
    """Run the suite for one set of weights, or several (a list: one table, a column each);
    refine: also score the refined volumes. Returns a benchmark.SuiteResult."""
    from xray2ct.benchmark import SuiteResult

    if isinstance(checkpoint, (list, tuple)) and len(checkpoint) > 1:
        return _compare([measure(c, device, n, quick, refine) for c in checkpoint], n, device, images_dir)
    if isinstance(checkpoint, (list, tuple)):
        checkpoint = checkpoint[0] if checkpoint else None
    data = measure(checkpoint, device, n, quick, refine)
    size, s = data["size"], data["xray_size"]
    ref_psnr, ref_ssim = np.array(data["nominal"]["psnr"]), np.array(data["nominal"]["ssim"])
    rows = []
    for q in data["points"]:
        pa, pk = np.mean(q["assumed_psnr"]), np.mean(q["known_psnr"])
        rows.append([q["label"], f"{pa:.2f}", f"{pk:.2f}", f"{pk - ref_psnr.mean():+.2f}",
                     f"{np.mean(q['assumed_ssim']):.3f}", f"{np.mean(q['known_ssim']):.3f}"])
    known_all = np.array([np.mean(q["known_psnr"]) for q in data["points"]])
    assumed_all = np.array([np.mean(q["assumed_psnr"]) for q in data["points"]])
    md = [f"{n} held-out phantoms (seeds {TEST_SEED}+), {size}³ / {s}² model, checkpoint: "
          f"{checkpoint or 'bundled weights'}; {_SETUP}", "",
          f"Nominal (training-geometry DRRs): PSNR {ref_psnr.mean():.2f} dB, 3D SSIM {ref_ssim.mean():.3f}.", "",
          table(["acquisition", "PSNR assumed", "PSNR known", "known − nominal", "SSIM assumed", "SSIM known"], rows),
          "",
          f"Over the grid: known {known_all.mean():.2f} dB (worst {known_all.min():.2f}), assumed "
          f"{assumed_all.mean():.2f} dB (worst {assumed_all.min():.2f}); nominal {ref_psnr.mean():.2f} dB. "
          f"{_GOAL}", *_refined_lines(data)]
    result = SuiteResult("\n".join(md), data)
    if images_dir is not None:
        png = result.figure(images_dir, "robustness", device, "PSNR over the acquisition grid, known vs assumed")
        _plot(data, float(ref_psnr.mean()), png)
    return result


_SETUP = (f"films rendered on a {DETECTOR_PX}² detector, patient centre {PATIENT_TO_DETECTOR_MM:g} mm from it; "
          "network only (no refinement). *assumed*: the training geometry (541 / 949 mm, covering detector); "
          "*known*: the acquisition's distances, pitch and PA/AP given (shifts and turns are the patient's and "
          "unknown to both).")
_GOAL = "Goal of issue #14: mean within 1.0 dB of nominal, no point more than 2 dB below."


def _compare(runs: list[dict], n: int, device: str, images_dir):
    """Several weights in one table: per weights, PSNR known and its difference to that weights' own nominal."""
    from xray2ct.benchmark import SuiteResult

    names = [f"W{i + 1}" for i in range(len(runs))]
    header = ["acquisition"] + [f"{k} known" for k in names] + [f"{k} − its nominal" for k in names]
    nominal = [float(np.mean(r["nominal"]["psnr"])) for r in runs]
    rows = [["nominal (training-geometry DRRs)"] + [f"{v:.2f}" for v in nominal] + ["0.00"] * len(runs)]
    for i, label in enumerate(q["label"] for q in runs[0]["points"]):
        known = [float(np.mean(r["points"][i]["known_psnr"])) for r in runs]
        rows.append([label] + [f"{v:.2f}" for v in known] + [f"{v - ref:+.2f}" for v, ref in zip(known, nominal)])
    summary = []
    for k, r, ref in zip(names, runs, nominal):
        known = np.array([np.mean(q["known_psnr"]) for q in r["points"]])
        ok = known.mean() >= ref - 1.0 and known.min() >= ref - 2.0
        summary.append(f"- {k}: `{r['checkpoint']}` ({r['size']}³ / {r['xray_size']}²): nominal {ref:.2f} dB, grid "
                       f"known mean {known.mean():.2f} dB ({known.mean() - ref:+.2f}), worst {known.min():.2f} dB "
                       f"({known.min() - ref:+.2f}): goal {'met' if ok else 'not met'}")
    refined = [line for k, r in zip(names, runs) for line in _refined_lines(r, f"{k}: ")]
    md = "\n".join([f"{n} held-out phantoms (seeds {TEST_SEED}+), PSNR in dB, one column per weights; {_SETUP}", "",
                    *summary, "", table(header, rows), "", _GOAL, *refined])
    result = SuiteResult(md, {"weights": runs})
    if images_dir is not None:
        png = result.figure(images_dir, "robustness-compare", device, "PSNR known over the grid, per weights")
        _plot_compare(runs, names, png)
    return result


def _refined_lines(data: dict, prefix: str = "") -> list[str]:
    """The refined scores of one `measure` run as markdown: a table per grid point and a summary
    against the refined nominal; [] when it was measured without refinement."""
    if "refined_psnr" not in data["nominal"]:
        return []
    ref = float(np.mean(data["nominal"]["refined_psnr"]))
    refined = np.array([np.mean(q["refined_psnr"]) for q in data["points"]])
    known = np.array([np.mean(q["known_psnr"]) for q in data["points"]])
    ok = refined.mean() >= ref - 1.0 and refined.min() >= ref - 2.0
    rows = [["nominal (training-geometry DRRs)", f"{np.mean(data['nominal']['psnr']):.2f}", f"{ref:.2f}", "+0.00"]]
    rows += [[q["label"], f"{k:.2f}", f"{r:.2f}", f"{r - ref:+.2f}"]
             for q, k, r in zip(data["points"], known, refined)]
    return ["", f"{prefix}refined as `reconstruct` refines by default (the model's `refine` settings, the known "
            f"geometry, each case on its own): nominal {ref:.2f} dB, grid mean {refined.mean():.2f} dB "
            f"({refined.mean() - ref:+.2f}), worst {refined.min():.2f} dB ({refined.min() - ref:+.2f}): goal "
            f"{'met' if ok else 'not met'}.", "",
            table(["acquisition", "network, known", "refined, known", "refined − refined nominal"], rows)]


def _plot_compare(runs: list[dict], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = runs[0]["points"]
    y = np.arange(len(points))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(points) + 1.2))
    for i, (name, r) in enumerate(zip(names, runs)):
        color = f"C{i}"
        ax.scatter([np.mean(q["known_psnr"]) for q in r["points"]], y, color=color, marker="os^dv"[i % 5],
                   label=f"{name}: acquisition known")
        ax.axvline(np.mean(r["nominal"]["psnr"]), color=color, lw=1, label=f"{name}: nominal")
        ax.axvline(np.mean(r["nominal"]["psnr"]) - 1, color=color, lw=0.5, ls="--")
    ax.set_yticks(y, [q["label"] for q in points], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("PSNR, dB (dashed: each nominal − 1 dB)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot(data: dict, nominal: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = data["points"]
    y = np.arange(len(points))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(points) + 1.2))
    ax.scatter([np.mean(q["assumed_psnr"]) for q in points], y, label="training geometry assumed", marker="o")
    ax.scatter([np.mean(q["known_psnr"]) for q in points], y, label="acquisition known", marker="s")
    ax.axvline(nominal, color="k", lw=1, label="nominal")
    ax.axvline(nominal - 1, color="k", lw=0.5, ls="--", label="nominal − 1 dB")
    ax.set_yticks(y, [q["label"] for q in points], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("PSNR, dB")
    ax.legend(fontsize=7, loc="upper right")  # the points stay well left of nominal
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
