"""Build a dataset in the on-disk layout (see layout.py) from phantoms or from CT files.

Both builders are resumable (complete cases are skipped; writes are atomic), print
nothing but a tqdm bar, and finish by writing splits.json.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from xray2ct.data.ctio import ARRAY_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, load_volume, preprocess
from xray2ct.data.errors import XRay2CTInputError
from xray2ct.data.layout import case_complete, write_case, write_splits

log = logging.getLogger(__name__)

SEED_STRIDE = 100003  # prime > any dataset size: datasets from different seeds share no phantom


def make_phantom_dataset(out: str | os.PathLike, n: int = 200, size: int = 64, seed: int = 0,
                         xray_size: int = 256, progress: bool = True, fov_mm: float = 320.0,
                         workers: int = 1) -> list[str]:
    """Write n synthetic chest phantoms (ids phantom_0000, ...) under out; returns the ids.

    workers > 1 writes cases in that many processes; each case depends only on its own
    seed, so the dataset is the same for any number of workers.
    """
    if n < 1 or size < 8 or workers < 1:
        raise ValueError(f"need n >= 1, size >= 8 and workers >= 1, got n={n}, size={size}, workers={workers}")
    ids = [f"phantom_{i:04d}" for i in range(n)]
    todo = [(out, case_id, size, seed * SEED_STRIDE + i, fov_mm, xray_size)
            for i, case_id in enumerate(ids) if not case_complete(out, case_id)]
    bar = tqdm(total=n, initial=n - len(todo), desc="phantoms", unit="case", disable=not progress)
    if workers == 1 or len(todo) < 2:
        for job in todo:
            _write_phantom(*job)
            bar.update(1)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a forked child of a process that has used torch's thread pool can hang
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            for done in as_completed([pool.submit(_write_phantom, *job) for job in todo]):
                done.result()  # re-raise a worker's error here
                bar.update(1)
    bar.close()
    log.info("%s: %d phantoms written, %d already present", out, len(todo), n - len(todo))
    write_splits(out, seed=seed)
    return ids


def _write_phantom(out, case_id: str, size: int, phantom_seed: int, fov_mm: float, xray_size: int) -> None:
    from xray2ct.data.phantoms import chest_phantom

    hu = chest_phantom(size, phantom_seed, fov_mm=fov_mm)
    write_case(out, case_id, hu, (fov_mm / size,) * 3, xray_size=xray_size)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the workers are the parallelism


@dataclass
class PrepareReport:
    """What `prepare_cts` did: case ids written, case ids already present, and
    (path, reason) for every input that could not be used."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def case_id_for(path: str | os.PathLike) -> str:
    """Case id from a file or folder name: extension dropped, anything outside
    [A-Za-z0-9_-] replaced by '_' (ids become folder and file names)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES + ARRAY_SUFFIXES + ITK_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return name or "case"


def prepare_cts(paths, out: str | os.PathLike, size: int = 64, xray_size: int = 256, fov_mm: float = 320.0,
                progress: bool = True, spacing=None, seed: int = 0) -> PrepareReport:
    """Turn CT files/folders into dataset cases under out, keeping going past bad ones.

    Args:
        paths: NIfTI/ITK files, DICOM series folders, .npy/.npz arrays (one case each).
        size: CT voxels per side after `preprocess`.  xray_size: DRR pixels per side.
        fov_mm: side of the cube cropped around the body, mm.
        spacing: voxel spacing (mm) for .npy/.npz inputs, which carry none.
        seed: seed of the train/val/test split.
    """
    report = PrepareReport()
    used: set[str] = set()
    for path in tqdm(list(paths), desc="prepare", unit="CT", disable=not progress):
        case_id = base = case_id_for(path)
        k = 2
        while case_id in used:  # two inputs with the same name stay two cases
            case_id, k = f"{base}_{k}", k + 1
        used.add(case_id)
        if case_complete(out, case_id):
            report.skipped.append(case_id)
            continue
        try:
            hu, sp = load_volume(path, spacing=spacing)
            cube = preprocess(hu, sp, size=size, fov_mm=fov_mm, name=str(path))
            write_case(out, case_id, cube, (fov_mm / size,) * 3, xray_size=xray_size)
        except XRay2CTInputError as e:
            log.warning("skipping %s", e)
            report.failed.append((str(path), str(e)))
            continue
        except Exception as e:  # a batch run must not die on one odd CT; keep the traceback in the log
            log.exception("skipping %s: unexpected error", path)
            report.failed.append((str(path), f"{type(e).__name__}: {e}"))
            continue
        report.done.append(case_id)
    log.info("%s: %d written, %d already present, %d failed", out,
             len(report.done), len(report.skipped), len(report.failed))
    write_splits(out, seed=seed)
    return report
