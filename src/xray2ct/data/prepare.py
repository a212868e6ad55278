"""Build a dataset in the on-disk layout (see layout.py) from phantoms or from CTs.

Both builders are resumable (complete cases are skipped; writes are atomic), run cases in
`workers` processes, print nothing but a tqdm bar, and finish by writing splits.json.
CTs come as files or as DICOM trees (dicomtree.py picks one series per patient) and
become cubes the way a preset says (presets.py); splits may come from ID lists
(splitfile.py).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from xray2ct.data.centring import CENTRING_BEFORE
from xray2ct.data.ctio import ARRAY_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, load_volume
from xray2ct.data.errors import XRay2CTInputError
from xray2ct.data.layout import case_complete, find_cases, save_splits, volume_path, write_case, write_splits
from xray2ct.data.presets import Preset, make_cube, resolve_preset
from xray2ct.data.splitfile import read_id_list, splits_from_files
from xray2ct.fileio import atomic_path

log = logging.getLogger(__name__)

SEED_STRIDE = 100003  # prime > any dataset size: datasets from different seeds share no phantom


def make_phantom_dataset(out: str | os.PathLike, n: int = 200, size: int = 64, seed: int = 0,
                         xray_size: int = 256, progress: bool = True, fov_mm: float = 320.0,
                         workers: int = 1, version: int = 2) -> list[str]:
    """Write n synthetic chest phantoms (ids phantom_0000, ...) under out; returns the ids.

    workers > 1 writes cases in that many processes; each case depends only on its own
    seed, so the dataset is the same for any number of workers. version: the phantom
    generator (`xray2ct.data.phantoms.VERSIONS`).
    """
    from xray2ct.data.phantoms import VERSIONS

    if n < 1 or size < 8 or workers < 1:
        raise ValueError(f"need n >= 1, size >= 8 and workers >= 1, got n={n}, size={size}, workers={workers}")
    if version not in VERSIONS:
        raise ValueError(f"unknown phantom version {version!r}; valid: {', '.join(map(str, VERSIONS))}")
    ids = [f"phantom_{i:04d}" for i in range(n)]
    todo = [(out, case_id, size, seed * SEED_STRIDE + i, fov_mm, xray_size, version)
            for i, case_id in enumerate(ids) if not case_complete(out, case_id)]
    bar = tqdm(total=n, initial=n - len(todo), desc="phantoms", unit="case", disable=not progress)
    run_jobs(_write_phantom, todo, workers, bar)
    bar.close()
    log.info("%s: %d phantoms written, %d already present", out, len(todo), n - len(todo))
    write_splits(out, seed=seed)
    return ids


def _write_phantom(out, case_id: str, size: int, phantom_seed: int, fov_mm: float, xray_size: int,
                   version: int) -> None:
    from xray2ct.data.phantoms import chest_phantom

    hu = chest_phantom(size, phantom_seed, fov_mm=fov_mm, version=version)
    write_case(out, case_id, hu, (fov_mm / size,) * 3, xray_size=xray_size)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the workers are the parallelism


def run_jobs(fn, jobs: list[tuple], workers: int, bar) -> None:
    """fn(*job) for every job, here (workers 1) or in that many spawned processes of one torch
    thread each, a tick of the tqdm `bar` per job done; a worker's error is raised here. Spawned
    processes import the caller's main module again: a script needs the main guard."""
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            fn(*job)
            bar.update(1)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a forked child of a process that has used torch's thread pool can hang
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        for done in as_completed([pool.submit(fn, *job) for job in jobs]):
            done.result()  # re-raise a worker's error here
            bar.update(1)


@dataclass
class PrepareReport:
    """What `prepare_cts` did.

    done / skipped: case ids written / already complete. failed: (input, problem) for
    every input or patient that gave no case. notes: what was chosen or left out and why
    (a patient's thinnest series, a rejected series). ignored: series that are not CT
    volumes (radiographs, localizers). report_path: the JSON record of all of it.
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ignored: int = 0
    report_path: Path | None = None


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


SETTINGS_FILE = "prepare.json"  # how the cases of a dataset folder were made


def check_settings(out: Path, preset: Preset) -> None:
    """Refuse to add cases made with other settings to a dataset folder; record them if new.

    A folder from before prepare.json existed is checked by the size of its first case.
    """
    import nibabel as nib

    want = preset.settings()
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise XRay2CTInputError(f"{path}: unreadable ({e}); delete it only if every case there was made "
                                    "with the settings of this run") from e
        have.setdefault("centring", CENTRING_BEFORE)
    else:
        cases = find_cases(out)
        have = {}
        if cases:
            have["size"] = int(nib.load(volume_path(out, cases[0])).shape[0])
    differ = {k: (have[k], want[k]) for k in have if k in want and have[k] != want[k]}
    if differ:
        what = ", ".join(f"{k} {a} (this run: {b})" for k, (a, b) in differ.items())
        raise XRay2CTInputError(f"{out}: holds cases prepared with {what}; one dataset folder takes one setting. "
                                "Give another --out folder")
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(want, indent=1) + "\n")


@dataclass
class _Job:
    case_id: str
    label: str  # what to call the input in messages: a path, or "patient P" and its series folder
    path: str | None = None  # a CT file (or folder), read by ctio.load_volume
    dicom: tuple[str, ...] = ()  # or the files of one checked DICOM series


def _collect(paths, report: PrepareReport, record: dict, workers: int, progress: bool) -> list[_Job]:
    """Inputs -> one job per case: a file is a case; the DICOM under the folders, one case per patient."""
    from xray2ct.data import dicomtree

    files, folders, seen = [], [], set()
    for p in map(Path, paths):
        key = os.path.realpath(p)
        if key in seen:
            continue  # the same input twice is one case
        seen.add(key)
        (folders if p.is_dir() else files).append(p)
    jobs, used = [], set()

    def unique(case_id: str) -> str:
        base, k = case_id, 2
        while case_id in used:  # two inputs with the same name stay two cases
            case_id, k = f"{base}_{k}", k + 1
        used.add(case_id)
        return case_id

    for p in files:
        jobs.append(_Job(unique(case_id_for(p)), str(p), path=str(p)))
    if not folders:
        return jobs
    patients = dicomtree.scan(folders, workers=workers, progress=progress)
    found = [s.folder for c in patients.values() for s in c.series()]
    for folder in folders:
        if not any(_inside(f, folder) for f in found):
            report.failed.append((str(folder), "no DICOM image series found in this folder or below it"))
    for pid, choice in patients.items():
        label = f"patient {pid or '(no PatientID)'}"
        report.ignored += len(choice.ignored)
        record["series"][pid] = choice.record()
        if choice.chosen is None:
            if choice.has_ct():  # a patient with only radiographs or localizers is no CT case: nothing failed
                report.failed.append((label, choice.why_none()))
            continue
        root = next((f for f in folders if _inside(choice.chosen.folder, f)), folders[0])
        case_id = unique(dicomtree.patient_case_id(pid, fallback=case_id_for(root)))
        jobs.append(_Job(case_id, f"{label} ({choice.chosen.folder})", dicom=choice.chosen.geometry.paths))
    report.notes += dicomtree.summary_lines(patients)
    return jobs


def _inside(path, folder) -> bool:
    """Whether `path` is `folder` or below it (symlinks resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _make_case(out: str, job: _Job, preset: Preset, spacing) -> str | None:
    """Write one case; returns None, or the problem as one line (a batch run keeps going)."""
    from xray2ct.data.ctio import load_dicom_series

    try:
        if job.dicom:
            hu, sp = load_dicom_series(job.dicom, Path(job.dicom[0]).parent)
        else:
            hu, sp = load_volume(job.path, spacing=spacing)
        cube = make_cube(hu, sp, preset, name=job.label)
        write_case(out, job.case_id, cube, (preset.fov_mm / preset.size,) * 3, xray_size=preset.xray_size)
    except XRay2CTInputError as e:
        return str(e)
    except Exception as e:  # one odd CT must not end a batch; keep the traceback in the log
        log.exception("%s: unexpected error", job.label)
        return f"{job.label}: {type(e).__name__}: {e}"
    return None


def prepare_cts(paths, out: str | os.PathLike, size: int | None = None, xray_size: int | None = None,
                fov_mm: float | None = None, progress: bool = True, spacing=None, seed: int = 0,
                preset: str = "ours", workers: int = 1, split_files=None) -> PrepareReport:
    """Turn CT files and DICOM trees into dataset cases under out, keeping going past bad ones.

    Resumable and safe to rerun: complete cases are skipped, writes are atomic, and a
    folder made with other settings is refused (`check_settings`). Writes out/splits.json
    and out/prepare_report.json (every input, series choice and failure).

    Args:
        paths: NIfTI/ITK files and .npy/.npz arrays (one case each), and folders: DICOM
            trees of any depth (TCIA's patient/study/series), one case per patient from
            its thinnest usable axial CT series (see `dicomtree`).
        size, xray_size, fov_mm: CT voxels per side, DRR pixels per side, cube side in mm;
            None: the preset's (see `presets.PRESETS`).
        spacing: voxel spacing (mm) for .npy/.npz inputs, which carry none.
        seed: seed of the train/val/test split.  preset: "ours" or "x2ct".
        workers: processes reading headers and writing cases.
        split_files: {split: file of patient IDs} (`splitfile`); None: a seeded 80/10/10 split.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    chosen = resolve_preset(preset, size=size, xray_size=xray_size, fov_mm=fov_mm)
    lists = None if split_files is None else {k: Path(v) for k, v in split_files.items()}
    for path in (lists or {}).values():
        read_id_list(path)  # a bad split file fails now, not after hours of preparation
    out = Path(out)
    check_settings(out, chosen)
    report = PrepareReport()
    record = {"settings": chosen.settings(), "inputs": [str(p) for p in paths], "cases": {}, "series": {}}
    jobs = _collect(paths, report, record, workers, progress)
    record["cases"] = {job.case_id: job.label for job in jobs}
    report.skipped = [job.case_id for job in jobs if case_complete(out, job.case_id)]
    todo = [job for job in jobs if job.case_id not in report.skipped]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="prepare", unit="case", disable=not progress)
    for job, problem in _run(todo, out, chosen, spacing, workers):
        if problem is None:
            report.done.append(job.case_id)
        else:
            log.info("%s: not prepared: %s", job.label, problem)  # listed by the caller; the CLI prints them
            report.failed.append((job.label, problem))
        bar.update(1)
    bar.close()
    log.info("%s: %d written, %d already present, %d failed", out,
             len(report.done), len(report.skipped), len(report.failed))
    if lists is None:
        write_splits(out, seed=seed)
    else:
        save_splits(out, splits_from_files(lists, find_cases(out), seed=seed))
    record.update(failed=[{"input": i, "problem": p} for i, p in report.failed], notes=report.notes)
    report.report_path = out / "prepare_report.json"
    with atomic_path(report.report_path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return report


def _run(jobs: list[_Job], out: Path, preset: Preset, spacing, workers: int):
    """Yield (job, problem or None) as each case is written, by `workers` processes."""
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            yield job, _make_case(str(out), job, preset, spacing)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a forked child of a process that has used torch's thread pool can hang
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        futures = {pool.submit(_make_case, str(out), job, preset, spacing): job for job in jobs}
        for done in as_completed(futures):
            try:
                problem = done.result()
            except Exception as e:  # the worker died (killed for memory): this case and the pool's others fail
                problem = f"worker process failed ({type(e).__name__}: {e}); rerun to retry, maybe with fewer --workers"
            yield futures[done], problem
