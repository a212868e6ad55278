"""Find the CT volumes in a DICOM tree as TCIA delivers it (LIDC-IDRI: patient / study /
series folders, at any depth) and choose one per patient.

Only headers are read (pydicom, no pixels). Files are grouped by SeriesInstanceUID, not by
folder, so a series split over folders is one series and a folder holding several is
several. A series is used when it is an axial CT volume: Modality CT, not a localizer
(scout), at least MIN_SLICES slices, one orientation, size and pixel spacing, evenly
spaced slices (`dicomseries.slice_geometry`). LIDC also holds CR/DX radiographs and
localizers; they are skipped. A patient with several usable series gets the one with the
thinnest slices (then the most slices), and the report says so.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np

from xray2ct.data.dicomseries import SliceGeometry, SliceHeader, read_headers, slice_geometry
from xray2ct.data.errors import XRay2CTInputError

log = logging.getLogger(__name__)

MIN_SLICES = 50  # fewer: a partial or survey series, not a chest CT
MIN_AXIAL_COS = 0.95  # |slice normal · z| at least this (about 18°): axial, gantry tilt allowed
NOT_VOLUME_TYPES = ("LOCALIZER", "SCOUT")  # ImageType values of planning images


@dataclass
class Series:
    """One series found in the tree: its slices (one header per SOPInstanceUID)."""

    uid: str
    slices: list[SliceHeader]
    geometry: SliceGeometry | None = None  # set once the series passed the checks

    @property
    def first(self) -> SliceHeader:
        return self.slices[0]

    @property
    def folder(self) -> str:
        """The folder holding its files (their common parent when split over several)."""
        return os.path.commonpath([os.path.dirname(h.path) for h in self.slices])

    def describe(self) -> str:
        h = self.first
        what = f"{h.modality or '?'} series {self.uid} ({len(self.slices)} file(s)"
        what += f", {self.geometry.slice_mm:.3g} mm slices" if self.geometry else ""
        return what + f") in {self.folder}"


@dataclass
class PatientChoice:
    """The series chosen for one patient and what happened to the patient's other series."""

    patient_id: str
    chosen: Series | None = None
    passed_over: list[Series] = field(default_factory=list)  # usable, not the thinnest
    rejected: list[tuple[Series, str]] = field(default_factory=list)  # CT volumes that failed a check
    ignored: list[tuple[Series, str]] = field(default_factory=list)  # not CT volumes (CR, localizer, ...)

    def series(self) -> list[Series]:
        """Every series of the patient."""
        return ([self.chosen] if self.chosen else []) + self.passed_over + [s for s, _ in self.rejected + self.ignored]

    def has_ct(self) -> bool:
        """Whether the patient has a CT series meant as a volume (not a localizer), usable or not."""
        return bool(self.chosen or self.rejected) or any(
            s.first.modality == "CT" and not _planning(s) for s, _ in self.ignored)

    def record(self) -> dict:
        """The choice as plain JSON values, for the prepare report."""
        return {"chosen": self.chosen and series_record(self.chosen),
                "passed_over": [series_record(s) for s in self.passed_over],
                "rejected": [{**series_record(s), "problem": why} for s, why in self.rejected],
                "ignored": [{**series_record(s), "why": why} for s, why in self.ignored]}

    def why_none(self) -> str:
        """One line: why this patient has no usable series."""
        reasons = [f"{s.describe()}: {why}" for s, why in self.rejected]
        reasons += [f"{s.describe()}: {why}" for s, why in self.ignored if s.first.modality == "CT" and not _planning(s)]
        others = len(self.rejected) + len(self.ignored) - len(reasons)
        tail = f" (and {others} series that are not CT volumes: radiographs, localizers)" if others else ""
        return "no usable axial CT series: " + ("; ".join(reasons) if reasons else "none found") + tail


def list_files(roots) -> list[str]:
    """Every file under the folders `roots` (any depth), hidden ones skipped, each real file once
    (the same tree given twice, or a patient folder inside a tree given too, is read once)."""
    seen: set[str] = set()
    out: list[str] = []
    for root in roots:
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                if not name.startswith(".") and real not in seen:
                    seen.add(real)
                    out.append(path)
    return out


def read_tree_headers(files: list[str], workers: int = 1, progress: bool = False) -> list[SliceHeader]:
    """Headers of the DICOM files among `files`, read by `workers` processes."""
    from tqdm.auto import tqdm

    chunk = 256  # files per task: enough work to amortise the process round trip
    chunks = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    bar = tqdm(total=len(files), desc="DICOM headers", unit="file", disable=not progress)
    headers: list[SliceHeader] = []
    if workers == 1 or len(chunks) < 2:
        for part in chunks:
            headers += read_headers(part)
            bar.update(len(part))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=multiprocessing.get_context("spawn")) as pool:
            for part, got in zip(chunks, pool.map(read_headers, chunks)):
                headers += got
                bar.update(len(part))
    bar.close()
    return headers


def group_series(headers: list[SliceHeader]) -> list[Series]:
    """Headers -> series by SeriesInstanceUID; a slice present twice (same SOPInstanceUID,
    e.g. a copied folder) counts once."""
    by_uid: dict[str, dict[str, SliceHeader]] = {}
    for h in headers:
        by_uid.setdefault(h.series_uid, {}).setdefault(h.sop_uid, h)
    return [Series(uid, list(slices.values())) for uid, slices in sorted(by_uid.items())]


def _planning(series: Series) -> str | None:
    """The planning ImageType (LOCALIZER, SCOUT) any slice of the series has, or None."""
    kinds = {t for s in series.slices for t in s.image_type}
    return next((t for t in NOT_VOLUME_TYPES if t in kinds), None)


def not_a_ct_volume(series: Series) -> str | None:
    """Why a series is not meant as a CT volume (a radiograph, a localizer, a few slices), or None."""
    h = series.first
    if h.modality != "CT":
        return f"modality {h.modality or 'missing'}, not CT"
    planning = _planning(series)
    if planning:
        return f"a {planning.lower()} (ImageType {'/'.join(h.image_type)})"
    if len(series.slices) < MIN_SLICES:
        return f"{len(series.slices)} slice(s), fewer than {MIN_SLICES}"
    return None


def check_volume(series: Series) -> str | None:
    """Check a CT series' geometry (sets `series.geometry`); the problem as text, or None."""
    try:
        geometry = slice_geometry(series.slices, series.folder)
    except XRay2CTInputError as e:
        return str(e).removeprefix(f"{series.folder}: ")
    if abs(geometry.normal[2]) < MIN_AXIAL_COS:
        return f"not axial (slice normal {np.round(geometry.normal, 2).tolist()})"
    series.geometry = geometry
    return None


def choose_per_patient(series: list[Series]) -> dict[str, PatientChoice]:
    """Sort every series into chosen / passed over / rejected / ignored, per PatientID."""
    patients: dict[str, PatientChoice] = {}
    for s in series:
        choice = patients.setdefault(s.first.patient_id, PatientChoice(s.first.patient_id))
        why = not_a_ct_volume(s)
        if why:
            choice.ignored.append((s, why))
            continue
        problem = check_volume(s)
        if problem:
            log.info("%s: not used: %s", s.describe(), problem)
            choice.rejected.append((s, problem))
            continue
        choice.passed_over.append(s)
    for choice in patients.values():
        if choice.passed_over:
            # thinnest slices first, then most slices; the UID makes ties deterministic
            ranked = sorted(choice.passed_over, key=lambda s: (round(s.geometry.slice_mm, 3), -len(s.slices), s.uid))
            choice.chosen, choice.passed_over = ranked[0], ranked[1:]
    return dict(sorted(patients.items()))


def patient_case_id(patient_id: str, fallback: str) -> str:
    """Case id from a PatientID: anything outside [A-Za-z0-9_-] becomes '_'; `fallback` when empty."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", patient_id).strip("_")
    return name or fallback


def scan(roots, workers: int = 1, progress: bool = False) -> dict[str, PatientChoice]:
    """Walk the folders `roots`, read every DICOM header, choose one CT series per patient."""
    files = list_files(roots)
    headers = read_tree_headers(files, workers=workers, progress=progress)
    series = group_series(headers)
    log.info("%s: %d file(s), %d DICOM image(s) in %d series", ", ".join(map(str, roots)), len(files), len(headers),
             len(series))
    return choose_per_patient(series)


def summary_lines(patients: dict[str, PatientChoice]) -> list[str]:
    """Lines for the patients that got a case: which series when there was a choice, and which
    CT series were rejected (a patient without a case is a failure and says why itself)."""
    lines = []
    for pid, c in patients.items():
        if c.chosen is None:
            continue
        if c.passed_over:
            lines.append(f"{pid or '(no PatientID)'}: chose {c.chosen.describe()}, the thinnest slices of "
                         f"{1 + len(c.passed_over)} usable CT series")
        for s, why in c.rejected:
            lines.append(f"{pid or '(no PatientID)'}: rejected {s.describe()}: {why}")
    return lines


def series_record(s: Series) -> dict:
    """A series as plain JSON values, for the prepare report."""
    h = s.first
    return {"uid": s.uid, "folder": s.folder, "files": len(s.slices), "modality": h.modality,
            "image_type": list(h.image_type), "description": h.description,
            "slice_mm": None if s.geometry is None else round(s.geometry.slice_mm, 4)}

