"""The command line end to end: every command has --help, and the foundation commands
produce what the README says."""
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from xray2ct.cli import app

runner = CliRunner()
COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_phantoms_command_writes_seed_layout(tmp_path):
    result = runner.invoke(app, ["phantoms", "--out", str(tmp_path), "--n", "3", "--size", "16", "--seed", "1",
                                 "--xray-size", "32"])
    assert result.exit_code == 0, result.output
    ids = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert len(ids) == 3
    for i in ids:
        assert {f"{i}.nii.gz", f"{i}_pa_drr.png", f"{i}_lat_drr.png"} <= {p.name for p in (tmp_path / i).iterdir()}
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert sorted(sum(splits.values(), [])) == ids


def test_prepare_command_lists_failures_and_continues(tmp_path):
    from xray2ct.data.ctio import save_nifti
    from xray2ct.data.phantoms import chest_phantom

    good = tmp_path / "in" / "patient_a.nii.gz"
    save_nifti(good, chest_phantom(size=32, seed=2), (10.0, 10.0, 10.0))
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "out"
    args = ["prepare", "--ct", str(good), "--ct", str(bad), "--out", str(out), "--size", "16", "--xray-size", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # any failed input fails the run, after the others are done
    assert "broken.nii.gz" in result.output and "failed 1" in result.output
    vol = nib.load(out / "patient_a" / "patient_a.nii.gz")
    assert vol.shape == (16, 16, 16) and np.allclose(vol.header.get_zooms(), 20.0)
    again = runner.invoke(app, args)  # resumable: the good case is skipped
    assert "skipped (already there) 1" in again.output and again.exit_code == 1
    only_good = runner.invoke(app, args[:3] + args[5:])
    assert only_good.exit_code == 0 and "failed 0" in only_good.output


def test_user_error_is_one_line_not_a_traceback(tmp_path):
    exe = Path(sys.executable).parent / "xray2ct"
    missing = tmp_path / "nope"
    r = subprocess.run([str(exe), "info", "--config", str(missing / "x.json")], capture_output=True, encoding="utf-8", errors="replace")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "x.json" in r.stderr


def test_benchmark_quick_writes_sections(tmp_path):
    md = tmp_path / "B.md"
    result = runner.invoke(app, ["benchmark", "--suite", "all", "--quick", "--out", str(md)])
    assert result.exit_code == 0, result.output
    text = md.read_text()
    for suite in ("projector", "data"):
        assert f"<!-- suite:{suite}:cpu -->" in text
    assert "phantoms / s" in text and "forward+backward ms" in text
    # re-running replaces the section instead of appending a second one
    runner.invoke(app, ["benchmark", "--suite", "data", "--quick", "--out", str(md)])
    assert md.read_text().count("<!-- suite:data:cpu -->") == 1


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os

    from xray2ct.fileio import atomic_path

    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp file left


def test_ci_installs_chromium_without_recommended_packages():
    # Debian's chromium recommends ~115 packages (479 MB) the headless browser test does not use
    script = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    installs = [line for line in script.splitlines() if "apt-get install" in line]
    assert installs and all("--no-install-recommends" in line for line in installs)
