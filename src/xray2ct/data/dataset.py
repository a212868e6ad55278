"""Training data: a folder of cases, each a CT and its PA and lateral radiographs.

Layout (the seed's, see `xray2ct.data.layout`), with the other namings seed-era data uses::

    ROOT/{id}/{id}.nii.gz       or ct_volume.nii.gz  (suffix .nii.gz, .nii or .npy)
    ROOT/{id}/{id}_pa_drr.png   or drr_frontal.png   (.png, .npy, .tif(f), .jp(e)g, .dcm)
    ROOT/{id}/{id}_lat_drr.png  or drr_lateral.png
    ROOT/splits.json            optional: {"train": [ids], "val": [ids], "test": [ids]}

When several candidates exist, the id-named file beats the generic name, then suffixes
go in the order listed. .npy volumes are taken as HU already in our (d, h, w) axes;
their spacing is irrelevant here.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from xray2ct.data.ctio import load_volume
from xray2ct.data.errors import XRay2CTInputError
from xray2ct.data.layout import SPLITS, split_ids
from xray2ct.data.xrayio import load_xray
from xray2ct.physics.hu import hu_to_unit
from xray2ct.physics.radiograph import RadiographStyle

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy")
IMAGE_SUFFIXES = (".png", ".npy", ".tif", ".tiff", ".jpg", ".jpeg", ".dcm")
# key: (what it is, accepted name stems in order of preference, accepted suffixes)
FILES = {
    "ct": ("CT volume", ("{id}", "ct_volume"), VOLUME_SUFFIXES),
    "pa": ("PA X-ray", ("{id}_pa_drr", "drr_frontal"), IMAGE_SUFFIXES),
    "lat": ("lateral X-ray", ("{id}_lat_drr", "drr_lateral"), IMAGE_SUFFIXES),
}
LAYOUT_HINT = "expected ROOT/{id}/{id}.nii.gz, ROOT/{id}/{id}_pa_drr.png, ROOT/{id}/{id}_lat_drr.png"


@dataclass(frozen=True)
class Case:
    """One patient: its id and the three files found for it."""

    id: str
    ct: Path
    pa: Path
    lat: Path


@dataclass(frozen=True)
class ScanProblem:
    """A case folder that cannot be used; `message` names the case and what is missing."""

    case_id: str
    folder: Path
    message: str

    def __str__(self) -> str:
        return self.message


def _find(folder: Path, case_id: str, stems: tuple, suffixes: tuple) -> Path | None:
    """First existing file named stem + suffix, stems in order, then suffixes in order."""
    names = (stem.format(id=case_id) + suffix for stem in stems for suffix in suffixes)
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _looks_like_case(folder: Path) -> bool:
    """A sub-folder holding any image or volume file is a case; others (logs, runs) are not."""
    suffixes = IMAGE_SUFFIXES + VOLUME_SUFFIXES
    return any(p.is_file() and p.name.lower().endswith(suffixes) for p in folder.iterdir())


def _resize_volume(ct: torch.Tensor, n: int) -> torch.Tensor:
    """(1, D, H, W) -> (1, n, n, n): area averaging when shrinking every axis, else trilinear."""
    x = ct[None]  # (1, 1, D, H, W)
    if min(ct.shape[1:]) >= n:  # averaging avoids the aliasing of sparse trilinear samples
        x = F.interpolate(x, size=(n, n, n), mode="area")
    else:
        x = F.interpolate(x, size=(n, n, n), mode="trilinear", align_corners=False)
    return x[0]


def select_split(root: Path, split: str | None, all_ids: list[str], seed: int, strict: bool) -> list[str]:
    """Ids of `split` among `all_ids`: from ROOT/splits.json, else the automatic seeded split."""
    if split is None:
        return all_ids
    path = Path(root) / "splits.json"
    if not path.is_file():
        if split not in SPLITS:
            raise XRay2CTInputError(f"unknown split {split!r}; valid: {', '.join(SPLITS)} or None "
                                    f"(no {path}, so the automatic 80/10/10 split is used)")
        # split over every case folder, broken ones included, so fixing a case moves no other
        return split_ids(all_ids, seed=seed)[split]
    try:
        splits = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise XRay2CTInputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(splits, dict) or not all(
            isinstance(v, list) and all(isinstance(i, str) for i in v) for v in splits.values()):
        raise XRay2CTInputError(f'{path}: expected {{"train": [ids], "val": [ids], "test": [ids]}}')
    if split not in splits:
        raise XRay2CTInputError(f"{path}: no split {split!r}; valid: {', '.join(map(repr, splits))} or None")
    ids = splits[split]
    unknown = sorted(set(ids) - set(all_ids))
    if unknown:
        msg = f"{path}: split {split!r} lists {len(unknown)} id(s) with no case folder: {', '.join(unknown[:10])}"
        if strict:
            raise XRay2CTInputError(msg)
        warnings.warn(msg, stacklevel=4)
    return ids


class BiplanarDataset(Dataset):
    """Cases under `root` as {"pa": (1,S,S), "lat": (1,S,S), "ct": (1,N,N,N), "id": str}.

    Args:
        root: dataset folder (layout in the module docstring).
        split: "train"/"val"/"test" (or any name in splits.json); None for every case.
            Without splits.json the cases are split 80/10/10 by `layout.split_ids(ids,
            seed)`: ids sorted, permuted by numpy's default_rng(seed), val and test cut
            first (each at least one case when there are >= 3), the rest train.
        xray_size: S, side of the X-ray images (`load_xray` pads, resizes, normalizes).
        volume_size: N; the CT is resized to N^3 when its shape differs. None: as stored.
        augment: film-style augmentation applied to each view; its randomness comes from
            (seed, epoch, index), so an item is reproducible. Call `set_epoch` per epoch
            (DataLoader workers copy the dataset when an epoch starts, unless persistent).
        cache: keep decoded, pre-augmentation tensors in memory (per worker process).
        seed: seed for the automatic split and the augmentation.
        strict: an incomplete case under root is an error (True) or skipped with a warning.
    """

    def __init__(self, root, split: str | None = "train", xray_size: int = 128, volume_size: int | None = None,
                 augment: RadiographStyle | None = None, cache: bool = False, seed: int = 0, strict: bool = True):
        for name, v in (("xray_size", xray_size), ("volume_size", volume_size)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise XRay2CTInputError(f"{name} must be a positive integer, got {v!r}")
        self.root = Path(root)
        self.split, self.xray_size, self.volume_size = split, xray_size, volume_size
        self.augment, self.cache, self.seed, self.epoch = augment, cache, seed, 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

        cases, problems = self.scan(self.root)
        if problems:
            listing = "\n  ".join(p.message for p in problems)
            if strict:
                raise XRay2CTInputError(f"{self.root}: {len(problems)} incomplete case(s):\n  {listing}\n"
                                        "(pass strict=False to skip them)")
            warnings.warn(f"{self.root}: skipping {len(problems)} incomplete case(s):\n  {listing}", stacklevel=2)
        if not cases:
            raise XRay2CTInputError(f"{self.root}: no cases found; {LAYOUT_HINT}" + self._single_case_hint())
        by_id = {c.id: c for c in cases}
        wanted = self._split_ids(sorted(by_id) + [p.case_id for p in problems], strict)
        self.cases = [by_id[i] for i in sorted(wanted) if i in by_id]
        if not self.cases:
            raise XRay2CTInputError(f"{self.root}: split {split!r} holds no usable case "
                                    f"({len(wanted)} id(s) listed, {len(cases)} complete case(s) found)")
        log.info("%s: %d case(s) in split %r", self.root, len(self.cases), split)

    # ------------------------------------------------------------------ discovery
    @staticmethod
    def scan(root) -> tuple[list[Case], list[ScanProblem]]:
        """Find the cases under root -> (complete cases sorted by id, problems of the rest)."""
        root = Path(root)
        if not root.exists():
            raise XRay2CTInputError(f"{root}: dataset folder not found")
        if not root.is_dir():
            raise XRay2CTInputError(f"{root}: is a file, expected a dataset folder ({LAYOUT_HINT})")
        cases, problems = [], []
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        for folder in folders:
            if not _looks_like_case(folder):
                continue
            cid = folder.name
            found = {k: _find(folder, cid, stems, suffixes) for k, (_, stems, suffixes) in FILES.items()}
            missing = [k for k, p in found.items() if p is None]
            if missing:
                what = "; ".join(f"{FILES[k][0]} (expected "
                                 + " or ".join(stem.format(id=cid) + FILES[k][2][0] for stem in FILES[k][1]) + ")"
                                 for k in missing)
                problems.append(ScanProblem(cid, folder, f"case {cid!r} ({folder}): missing {what}"))
            else:
                cases.append(Case(id=cid, **found))
        return cases, problems

    def _single_case_hint(self) -> str:
        if _looks_like_case(self.root):
            return f" ({self.root} itself holds image files: pass its parent folder)"
        return ""

    def _split_ids(self, all_ids: list[str], strict: bool) -> list[str]:
        """Ids of the chosen split, from splits.json or the automatic seeded split."""
        return select_split(self.root, self.split, all_ids, self.seed, strict)

    # ------------------------------------------------------------------ items
    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation draws of this epoch (same epoch -> same images)."""
        self.epoch = int(epoch)

    def _decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pa (1,S,S), lat (1,S,S), ct (1,N,N,N) before augmentation."""
        case = self.cases[index]
        pa = load_xray(case.pa, self.xray_size)[None]
        lat = load_xray(case.lat, self.xray_size)[None]
        hu, _ = load_volume(case.ct, spacing=1.0)  # spacing only used for .npy, which has none
        if hu.max() <= 2.0 and hu.min() >= -1.0:
            warnings.warn(f"{case.ct}: values lie in [{hu.min():g}, {hu.max():g}], which looks normalized; "
                          "volumes are expected in Hounsfield units", stacklevel=3)
        ct = hu_to_unit(torch.from_numpy(hu))[None]  # (1, D, H, W)
        if self.volume_size is not None and ct.shape[1:] != (self.volume_size,) * 3:
            ct = _resize_volume(ct, self.volume_size)
        return pa, lat, ct.contiguous()

    def _generator(self, index: int) -> torch.Generator:
        # SeedSequence mixes the three numbers, so nearby (epoch, index) pairs are unrelated
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def __getitem__(self, index: int) -> dict:
        index = int(index)  # samplers may hand numpy or tensor integers; the cache needs a plain key
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} cases")
        index %= len(self)
        if self.cache:
            if index not in self._cache:
                self._cache[index] = self._decode(index)
            # clones: a caller writing into an item must not change the cache
            pa, lat, ct = (t.clone() for t in self._cache[index])
        else:
            pa, lat, ct = self._decode(index)
        if self.augment is not None:
            g = self._generator(index)
            pa, lat = (self.augment(v[None], g)[0] for v in (pa, lat))  # independent draws per view
        return {"pa": pa, "lat": lat, "ct": ct, "id": self.cases[index].id}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, cases={len(self)}, "
                f"xray_size={self.xray_size}, volume_size={self.volume_size})")
