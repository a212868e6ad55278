"""`xray2ct reconstruct --batch`: every `{id}_pa*` / `{id}_lat*` pair in a folder, one model load."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from xray2ct.engine.inference import ReconstructionError, load_for_inference
from xray2ct.engine.outputs import FORMATS
from xray2ct.engine.reconstruct import XRAY_SUFFIXES, Job, check_upscale, load_study_for
from xray2ct.engine.refining import RefineOptions
from xray2ct.errors import UserError

log = logging.getLogger(__name__)

_PAIR = re.compile(r"^(?P<id>.+)_(?P<view>pa|lat)(?:[_\-.][^/]*)?$", re.IGNORECASE)


@dataclass
class BatchReport:
    """What `reconstruct_batch` did: (id, output) written, (id, output) already there,
    (id, reason) for every case that failed, (id, view) for every case written from one film."""

    done: list[tuple[str, Path]] = field(default_factory=list)
    skipped: list[tuple[str, Path]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    one_view: list[tuple[str, str]] = field(default_factory=list)  # (id, "pa" | "lat"): done from that film alone


def find_pairs(folder: str | os.PathLike, single_views: bool = False
               ) -> tuple[dict[str, tuple[Path | None, Path | None]], list[tuple[str, str]]]:
    """`{id}_pa*` / `{id}_lat*` radiographs under folder -> ({id: (pa, lat)}, [(id, problem)]).

    single_views: a case with one film of one view and none of the other is kept, its missing
    view None (reconstructed from the one film); otherwise it is a problem. Two films of one
    view are always a problem: which one is meant cannot be guessed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReconstructionError(f"{folder}: batch folder not found" if not folder.exists()
                                  else f"{folder}: is a file; --batch expects a folder of X-ray pairs")
    found: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not path.name.lower().endswith(XRAY_SUFFIXES) or path.name.startswith("."):
            continue
        m = _PAIR.match(path.name[: -len(path.suffix)])
        if m:
            found.setdefault(m["id"], {"pa": [], "lat": []})[m["view"].lower()].append(path)
    pairs, problems = {}, []
    for cid, views in sorted(found.items()):
        bad = [f"no {v} X-ray" if not views[v] else f"{len(views[v])} {v} X-rays ({', '.join(map(str, views[v]))})"
               for v in ("pa", "lat") if len(views[v]) != 1]
        one_missing = len(bad) == 1 and bad[0].startswith("no ")
        if not bad or (one_missing and single_views):
            pairs[cid] = tuple(views[v][0] if views[v] else None for v in ("pa", "lat"))
        else:
            hint = " (--single-views reconstructs it from the other film alone)" if one_missing else ""
            problems.append((cid, "; ".join(bad) + hint))
    return pairs, problems


def reconstruct_batch(folder, out_dir, checkpoint=None, device: str = "auto", upscale=None, fmt: str = "nifti",
                      overwrite: bool = False, uncertainty: bool = False, preview: bool = False,
                      progress: bool = True, report: bool = False,
                      refine: RefineOptions = RefineOptions(), acquisition=None,
                      cuda_graphs: bool = False, single_views: bool = False) -> BatchReport:
    """Reconstruct every pair in `folder` into out_dir/{id}.nii.gz (.npy, or {id}/ for DICOM).

    Optional out_dir/{id}_uncertainty.nii.gz, {id}_preview.png and {id}_report.html. A pair that
    fails is reported and the rest go on; a pair whose volume exists is skipped, and one whose
    extras exist fails naming them, unless overwrite. single_views: a case with a PA or a
    lateral film alone is reconstructed from it (as `reconstruct --pa` alone; its report and
    NIfTI description say so) instead of failing.
    """
    from tqdm.auto import tqdm

    pairs, problems = find_pairs(folder, single_views)
    result = BatchReport(failed=list(problems))
    if not pairs:
        wanted = "X-ray" if single_views else "complete X-ray pair"
        raise ReconstructionError(f"{folder}: no {wanted} found (expected {{id}}_pa.* and {{id}}_lat.* "
                                  f"with a suffix in {', '.join(XRAY_SUFFIXES)})"
                                  + (f"; problems: {'; '.join(f'{i}: {p}' for i, p in problems)}" if problems else ""))
    out_dir = Path(out_dir)
    suffix = {"nifti": ".nii.gz", "npy": ".npy", "dicom": ""}.get(fmt)
    if suffix is None:
        raise ReconstructionError(f"unknown output format {fmt!r}; valid: {', '.join(FORMATS)}")
    upscale = check_upscale(upscale)
    model, cfg, dev = load_for_inference(checkpoint, device, cuda_graphs)  # once, before the loop
    for cid, (pa, lat) in tqdm(pairs.items(), desc="reconstruct", unit="case", disable=not progress):
        out = out_dir / f"{cid}{suffix}"
        if out.exists() and not overwrite:
            result.skipped.append((cid, out))
            continue
        try:  # the extras are checked too: an existing {id}_report.html is not replaced without overwrite
            job = Job.check(out, fmt, out_dir / f"{cid}_uncertainty.nii.gz" if uncertainty else None,
                             out_dir / f"{cid}_preview.png" if preview else None, upscale, overwrite=overwrite,
                             report=out_dir / f"{cid}_report.html" if report else None, refine=refine)
            study = load_study_for(model, cfg, pa, lat, acquisition)
            result.done.append((cid, job.run(model, cfg, dev, None, title=cid, study=study)))
            if pa is None or lat is None:
                result.one_view.append((cid, "pa" if lat is None else "lat"))
        except UserError as e:
            log.info("%s failed: %s", cid, e)  # the report carries it; the CLI prints a table
            result.failed.append((cid, str(e)))
    return result

