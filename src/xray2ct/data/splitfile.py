"""Splits given as lists of patient IDs, so that results compare with a paper's split.

X2CT-GAN's LIDC-IDRI split (916 train / 102 test patients) ships as `train.txt` and
`test.txt`: one ID per line. Their IDs name a patient, optionally followed by study and
series (`LIDC-IDRI-0001.20000101.3000566.1`); a line matches the case whose id is the line
or the part before its first '.'. Blank lines and lines starting with '#' are skipped.
`xray2ct prepare --split-file train=train.txt --split-file test=test.txt`.

Their lists name scans, and a few patients have two: LIDC-IDRI-0442 has one scan in each
list. We prepare one case per patient, so such a patient goes to the first of test, val,
train that lists it (a test patient never trains), with a warning.

Without a val list, a seeded VAL_FRACTION of the train list becomes val (training picks
its best checkpoint on val), so the test list stays exactly the paper's.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from xray2ct.data.errors import XRay2CTInputError
from xray2ct.data.layout import SPLITS

log = logging.getLogger(__name__)

VAL_FRACTION = 0.05


def parse_split_files(items) -> dict[str, Path]:
    """["train=train.txt", "test=test.txt"] -> {"train": Path("train.txt"), ...}."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = str(item).partition("=")
        name = name.strip()
        if not sep or name not in SPLITS or not path.strip():
            raise XRay2CTInputError(f"--split-file {item!r}: expected SPLIT=FILE with SPLIT one of "
                                    f"{', '.join(SPLITS)} (e.g. train=train.txt)")
        if name in out:
            raise XRay2CTInputError(f"--split-file: split {name!r} given twice ({out[name]} and {path.strip()})")
        out[name] = Path(path.strip())
    return out


def read_id_list(path: str | os.PathLike) -> list[str]:
    """IDs in a split file, one per line, in order, without blanks, comments or repeats."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise XRay2CTInputError(f"{path}: cannot read the split file ({e})") from e
    ids = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    if not ids:
        raise XRay2CTInputError(f"{path}: the split file lists no IDs (expected one patient ID per line)")
    return list(dict.fromkeys(ids))


def _case_of(line: str, cases: set[str]) -> str | None:
    for candidate in (line, line.split(".", 1)[0]):
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", candidate).strip("_")  # as case ids are made
        if name in cases:
            return name
    return None


def splits_from_files(files: dict[str, Path], case_ids, seed: int = 0) -> dict[str, list[str]]:
    """{split: file} and the prepared case ids -> {"train", "val", "test": sorted ids}.

    A case listed in several files goes to the first of test, val, train (logged); IDs
    with no prepared case and cases in no file are logged (they are left out).
    """
    cases = set(case_ids)
    splits: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for name in sorted(files, key=("test", "val", "train").index):  # a test patient never trains
        path = files[name]
        lines = read_id_list(path)
        matched = {line: _case_of(line, cases) for line in lines}
        unknown = [line for line, case in matched.items() if case is None]
        if unknown:
            log.warning("%s: %d of %d ID(s) have no prepared case (not downloaded, or failed): %s%s", path,
                        len(unknown), len(lines), ", ".join(unknown[:5]), " ..." if len(unknown) > 5 else "")
        splits[name] = []
        for case in sorted({c for c in matched.values() if c is not None}):
            if case in owner:
                log.warning("%s: %s is in the %s list too; it stays in %s (one case per patient)", path, case,
                            owner[case], owner[case])
                continue
            owner[case] = name
            splits[name].append(case)
    if "val" not in splits and "train" in splits:
        train = splits["train"]
        k = max(1, round(VAL_FRACTION * len(train))) if len(train) >= 2 else 0
        picked = {train[i] for i in np.random.default_rng(seed).permutation(len(train))[:k]}
        splits["train"], splits["val"] = sorted(set(train) - picked), sorted(picked)
        log.info("no val list: %d case(s) of the train list (seed %d) validate", k, seed)
    left = sorted(cases - set(owner))
    if left:
        log.warning("%d prepared case(s) are in no split file and not used by any split: %s%s", len(left),
                    ", ".join(left[:5]), " ..." if len(left) > 5 else "")
    return {name: splits.get(name, []) for name in SPLITS}
