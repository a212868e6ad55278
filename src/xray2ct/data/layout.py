"""The dataset layout on disk (the seed's, see DESIGN.md):

    ROOT/{id}/{id}.nii.gz          CT, HU, int16, RAS affine
    ROOT/{id}/{id}_pa_drr.png      PA DRR, 16-bit grey, bones bright
    ROOT/{id}/{id}_lat_drr.png     lateral DRR, 16-bit grey
    ROOT/{id}/{id}_{pa,lat}_drr.json  the DRR's acquisition (xray2ct.acquisition sidecar)
    ROOT/splits.json               {"train": [...], "val": [...], "test": [...]}

Every file is written atomically, so a case whose three files exist is complete.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from xray2ct import Geometry, project
from xray2ct.data.ctio import save_nifti
from xray2ct.fileio import atomic_path
from xray2ct.physics.hu import hu_to_mu
from xray2ct.physics.radiograph import drr_to_radiograph

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def volume_path(root: str | os.PathLike, case_id: str) -> Path:
    return Path(root) / case_id / f"{case_id}.nii.gz"


def xray_path(root: str | os.PathLike, case_id: str, view: str) -> Path:
    """view: 'pa' or 'lat'."""
    return Path(root) / case_id / f"{case_id}_{view}_drr.png"


def case_files(root: str | os.PathLike, case_id: str) -> list[Path]:
    return [volume_path(root, case_id)] + [xray_path(root, case_id, v) for v in ("pa", "lat")]


def case_complete(root: str | os.PathLike, case_id: str) -> bool:
    return all(p.is_file() for p in case_files(root, case_id))


def drr_geometry(shape, spacing, xray_size: int = 256) -> Geometry:
    """The geometry the stored DRRs are rendered with (default distances, covering detector)."""
    return Geometry(volume_shape=tuple(shape), voxel_mm=tuple(spacing), det_shape=(xray_size, xray_size))


def render_drrs(hu: np.ndarray, spacing, xray_size: int = 256) -> np.ndarray:
    """HU (D, H, W) -> PA and lateral radiograph-like DRRs (2, xray_size, xray_size) in [0, 1]."""
    g = drr_geometry(hu.shape, spacing, xray_size)
    mu = hu_to_mu(torch.as_tensor(np.asarray(hu, dtype=np.float32)))
    with torch.no_grad():
        img = drr_to_radiograph(project(mu[None, None], g))  # (1, 2, R, C)
    return img[0].numpy()


def save_png16(path: str | os.PathLike, img: np.ndarray) -> Path:
    """[0, 1] image (H, W) -> 16-bit grey PNG, atomically."""
    from PIL import Image

    data = np.rint(np.clip(img, 0, 1) * 65535).astype(np.uint16)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(data).save(tmp, format="PNG")  # uint16 -> mode "I;16"
    return path


def write_case(root: str | os.PathLike, case_id: str, hu: np.ndarray, spacing, xray_size: int = 256) -> Path:
    """Write one case (CT + PA and lateral DRRs) under root/case_id; returns that folder.

    The CT is written last so that `find_cases` only lists cases whose DRRs exist too.
    Each DRR gets its acquisition sidecar (`{stem}.json`: source_iso_mm, source_det_mm,
    pixel_mm, position), which `reconstruct` reads.
    """
    from xray2ct.acquisition import write_sidecar

    drrs = render_drrs(hu, spacing, xray_size)
    geometry = drr_geometry(hu.shape, spacing, xray_size)
    for view, img in zip(("pa", "lat"), drrs):
        save_png16(xray_path(root, case_id, view), img)
        write_sidecar(xray_path(root, case_id, view), geometry, view)
    save_nifti(volume_path(root, case_id), hu, spacing, dtype="int16")
    return Path(root) / case_id


def find_cases(root: str | os.PathLike) -> list[str]:
    """Sorted ids of the case folders under root that hold a CT volume."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and volume_path(root, p.name).is_file())


def split_ids(ids, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> dict[str, list[str]]:
    """Deterministic split of case ids: sorted, shuffled by a seeded rng, then cut.

    With >= 3 cases val and test each get at least one case (and train keeps one).
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, got {fractions}")
    ids = sorted(set(ids))
    n = len(ids)
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
        while n_val + n_test > n - 1:  # keep a training case; trim the larger of val/test
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    val, test = order[:n_val], order[n_val : n_val + n_test]
    train = order[n_val + n_test :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def write_splits(root: str | os.PathLike, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> dict[str, list[str]]:
    """Split the cases found under root (see `split_ids`) and write root/splits.json."""
    return save_splits(root, split_ids(find_cases(root), seed=seed, fractions=fractions))


def save_splits(root: str | os.PathLike, splits: dict[str, list[str]]) -> dict[str, list[str]]:
    """Write {"train": [ids], "val": [ids], "test": [ids]} to root/splits.json, atomically."""
    path = Path(root) / "splits.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(splits, indent=1) + "\n")
    log.info("%s: train %d, val %d, test %d", path, *(len(splits.get(k, [])) for k in SPLITS))
    return splits
