"""Wide fields: the CT with the margin around the model's cube that a real film sees.

A chest film at 1800 mm on a 430 mm cassette sees about 400 mm of the patient, more than the
model's 320 mm cube, so films are rendered from a wider field (`data.acquisition.margin_mm`
per side, every axis) while the target stays the cube at the field's centre.

Where a field comes from:
  * phantoms: `chest_phantom(..., margin=m)`, the body continuing into the margin
    (`wide_phantom`); a pool of them is generated once into a cache folder (`phantom_pool`);
  * a dataset folder of CTs: `ROOT/{id}/{id}_field.nii.gz` beside the CT when present (same
    voxel size as the CT, the CT's cube at its centre), cropped or air-padded to the margin;
    else the CT padded with air (-1000 HU): the film then shows the body cut at the cube's edge.

`FieldDataset` items: {"field": (1, W, W, W) HU float32 with W = N + 2 margin, "ct": (1, N,
N, N) the target in [0, 1], "index": int (seeds the sample's acquisition), "id": str}.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from xray2ct.data.ctio import load_volume
from xray2ct.data.dataset import FILES, VOLUME_SUFFIXES, _find, _resize_volume, select_split
from xray2ct.data.errors import XRay2CTInputError
from xray2ct.physics.hu import hu_to_unit

log = logging.getLogger(__name__)

AIR_HU = -1000.0
FIELD_STEM = "{id}_field"


def wide_phantom(size: int, seed: int, fov_mm: float, margin: int, version: int = 2) -> np.ndarray:
    """A chest phantom over the cube plus `margin` voxels per side: HU (size + 2 margin)³, float32."""
    from xray2ct.data.phantoms import chest_phantom

    return chest_phantom(size, seed, fov_mm=fov_mm, version=version, margin=margin)  # the body continues


def fit_field(hu: np.ndarray | torch.Tensor, cube: int, margin: int):
    """Centre-crop or air-pad a field (D, H, W) to (cube + 2 margin)³ around its centre."""
    want = cube + 2 * margin
    x = torch.as_tensor(hu)
    for axis, n in enumerate(x.shape):
        lo = (n - want) // 2
        if lo >= 0:
            x = x.narrow(axis, lo, want)
        else:
            pad = [0, 0] * 3
            pad[2 * (2 - axis)], pad[2 * (2 - axis) + 1] = -lo, want - n + lo  # F.pad counts axes from the last
            x = F.pad(x[None], pad, value=AIR_HU)[0]
    return x.numpy() if isinstance(hu, np.ndarray) else x


def phantom_pool(root: str | os.PathLike, n: int, size: int, margin: int, seed: int, fov_mm: float = 320.0,
                 version: int = 2, workers: int = 1) -> Path:
    """n wide phantoms as int16 HU .npy files under `root` (generated on first use, resumable);
    phantom i has the seed of `make_phantom_dataset`'s case i, so held-out seeds stay apart.
    A cached pool whose first phantom no longer equals the generator's (the generator of that
    version changed since) is generated again. workers > 1 generates in that many processes
    (each phantom depends only on its seed: the same pool for any number)."""
    from tqdm.auto import tqdm

    from xray2ct.data.prepare import SEED_STRIDE, run_jobs

    folder = Path(root) / f"fields-{size}-m{margin}-n{n}-s{seed}-v{version}"
    jobs = [(folder / f"phantom_{i:04d}.npy", size, seed * SEED_STRIDE + i, fov_mm, margin, version)
            for i in range(n)]
    first = folder / "phantom_0000.npy"
    if first.is_file() and not np.array_equal(np.load(first), _pool_phantom(*jobs[0][1:])):
        log.warning("%s: the cached phantoms differ from phantom generator v%d now; generating them again",
                    folder, version)
        for old in folder.glob("phantom_*.npy"):
            old.unlink()
    todo = [job for job in jobs if not job[0].is_file()]
    if not todo:
        return folder
    log.info("generating %d wide-field phantoms into %s (%d process(es))", len(todo), folder, min(workers, len(todo)))
    folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="phantom pool", unit="phantom")
    run_jobs(_write_pool_phantom, todo, workers, bar)
    bar.close()
    return folder


def _pool_phantom(size: int, phantom_seed: int, fov_mm: float, margin: int, version: int) -> np.ndarray:
    return np.rint(wide_phantom(size, phantom_seed, fov_mm, margin, version)).astype(np.int16)


def _write_pool_phantom(path: Path, *phantom) -> None:
    _save_npy(path, _pool_phantom(*phantom))


def _save_npy(path: Path, array: np.ndarray) -> None:
    from xray2ct.fileio import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


class FieldDataset(Dataset):
    """Wide fields and target cubes of a split (see the module docstring).

    Args:
        root: a dataset folder (ROOT/{id}/{id}.nii.gz, optional {id}_field.nii.gz; X-ray files
            are not needed) or a `phantom_pool` folder (phantom_XXXX.npy).
        split: "train" / "val" / "test" (splits.json, else the seeded 80/10/10 split), None: all.
        volume_size: N; margin: voxels of field around the cube; seed: the automatic split's.
    """

    def __init__(self, root, split: str | None, volume_size: int, margin: int, seed: int = 0):
        self.root, self.n, self.margin = Path(root), int(volume_size), int(margin)
        pool = sorted(self.root.glob("phantom_*.npy"))
        if pool:
            files = {p.stem: p for p in pool}
        else:
            if not self.root.is_dir():
                raise XRay2CTInputError(f"{self.root}: dataset folder not found")
            stems, suffixes = FILES["ct"][1], VOLUME_SUFFIXES
            found = {d.name: _find(d, d.name, stems, suffixes) for d in sorted(self.root.iterdir()) if d.is_dir()}
            files = {k: v for k, v in found.items() if v is not None}
        if not files:
            raise XRay2CTInputError(f"{self.root}: no CT volumes found (expected ROOT/{{id}}/{{id}}.nii.gz)")
        wanted = set(select_split(self.root, split, sorted(files), seed, strict=True))
        self.ids = [i for i in sorted(files) if i in wanted]
        if not self.ids:
            raise XRay2CTInputError(f"{self.root}: split {split!r} holds no case")
        self.files = [files[i] for i in self.ids]
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Nothing varies per epoch here: the films are drawn by the renderer."""

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> field (1, W, W, W) HU as int16 (compact in memory), ct (1, N, N, N) in [0, 1]."""
        path, n, m = self.files[index], self.n, self.margin
        if path.suffix == ".npy" and path.parent == self.root:  # a phantom pool: the field, cube at its centre
            field = torch.from_numpy(fit_field(np.load(path), n, m).astype(np.float32))
            ct = hu_to_unit(field[m : m + n, m : m + n, m : m + n])[None]
            return field.to(torch.int16)[None], ct
        hu, _ = load_volume(path, spacing=1.0)
        hu = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))
        ct = hu_to_unit(hu)[None]
        scale = [n / s for s in hu.shape]  # the CT's voxels -> the model's
        if ct.shape[1:] != (n, n, n):
            ct = _resize_volume(ct, n)
        wide = _find(path.parent, self.ids[index], (FIELD_STEM,), VOLUME_SUFFIXES)
        if wide is not None:
            hu = torch.from_numpy(np.ascontiguousarray(load_volume(wide, spacing=1.0)[0], dtype=np.float32))
        size = tuple(max(1, round(s * k)) for s, k in zip(hu.shape, scale))
        if max(scale) <= 1:  # averaging when shrinking every axis, as the CT itself (_resize_volume)
            hu = F.interpolate(hu[None, None], size=size, mode="area")[0, 0]
        elif size != tuple(hu.shape):
            hu = F.interpolate(hu[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]
        return fit_field(hu, n, m).round().to(torch.int16)[None], ct.contiguous()

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index not in self._cache:
            self._cache[index] = self._load(index)
        field, ct = self._cache[index]
        return {"field": field.float(), "ct": ct.clone(), "index": index, "id": self.ids[index]}
