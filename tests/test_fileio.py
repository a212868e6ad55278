"""Atomic writes: data fsynced before the rename, leftovers of killed writers removed on the next
write of the same target (files and DICOM folders), folder outputs with normal permissions."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from xray2ct import fileio
from xray2ct.fileio import atomic_path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_temps_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    leftovers = {
        f".case_pa_drr.{dead}-abcd1234.png": False,  # killed writer of this target: removed
        f".case_pa_drr.{live}-abcd1234.png": True,  # a live writer: kept
        ".case_pa_drr.zz_09xyz.png": True,  # older naming, young: maybe still being written
        f".case_pa_drr.x.{dead}-abcd1234.png": True,  # another target (case_pa_drr.x.png): not ours
        f".case.{dead}-abcd1234.png": True,  # another target
    }
    for name in leftovers:
        (tmp_path / name).write_bytes(b"")
    old = tmp_path / ".case_pa_drr.old_1234.png"  # older naming, an hour old: stale
    old.write_bytes(b"")
    os.utime(old, (time.time() - 3600,) * 2)
    with atomic_path(tmp_path / "case_pa_drr.png") as tmp:
        tmp.write_bytes(b"png")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"case_pa_drr.png"} | {n for n, keep in leftovers.items() if keep}


def test_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    target = tmp_path / "v.npy"
    with atomic_path(target) as tmp:
        np.save(tmp, np.zeros(3))
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events  # file, rename, then the folder's entry
    assert events[0][1] == str(tmp) and events[2][1] == str(tmp_path)


def test_dicom_folder_gets_normal_permissions_and_replaces_a_killed_writes_leftovers(tmp_path):
    from xray2ct.engine.outputs import save_dicom_series

    dead = _dead_pid()
    stale = tmp_path / f".dcmout.{dead}-abcd1234"  # a killed DICOM write
    stale.mkdir()
    (stale / "slice_0001.dcm").write_bytes(b"half")
    stale_old = tmp_path / f".dcmout.{dead}-old-abcd1234"  # a killed overwrite's moved-aside folder
    stale_old.mkdir()
    hu = np.zeros((4, 8, 8), np.float32)
    out = save_dicom_series(tmp_path / "dcmout", hu, (2.0, 2.0, 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dcmout"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's private 0700
    assert len(list(out.iterdir())) == 4
    save_dicom_series(out, hu, (2.0, 2.0, 2.0))  # an overwrite leaves nothing beside it either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dcmout"]


def test_remove_stale_temps_ignores_a_missing_folder(tmp_path):
    assert fileio.remove_stale_temps(tmp_path / "nope" / "x.png") == []
