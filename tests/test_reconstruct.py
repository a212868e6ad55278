"""`xray2ct reconstruct` with a tiny untrained model: formats, orientation, upscaling,
extras, every bad input, refusal to overwrite, atomic writes, batch mode, the CLI.

Refinement is off here (these check the network's output through every path, and an
untrained model's σ makes refinement meaningless); tests/test_refine.py covers it."""
from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from xray2ct.checkpoint import CheckpointError, load_model, save_checkpoint
from xray2ct.config import load_config
from xray2ct.data.ctio import load_volume, our_affine
from xray2ct.data.errors import XRay2CTInputError
from xray2ct.engine import batch as B
from xray2ct.engine import inference as I
from xray2ct.engine import outputs as O
from xray2ct.engine import reconstruct as R
from xray2ct.errors import UserError
from xray2ct.physics.hu import unit_to_hu

from _tiny import N, S, tiny_run
from _tiny import TINY_MODEL as TINY

FOV = 320.0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Checkpoint, a PA/lateral pair, and the model's expected output for that pair."""
    root = tmp_path_factory.mktemp("recon")
    ckpt, _ = tiny_run(root, n_cases=2)
    pa, lat = (root / "data" / "phantom_0000" / f"phantom_0000_{v}_drr.png" for v in ("pa", "lat"))
    model, cfg, _ = load_model(ckpt)
    xrays = R.load_pair(pa, lat, S)
    with torch.no_grad():
        out = model(xrays)
    return {"ckpt": ckpt, "pa": pa, "lat": lat, "root": root, "cfg": cfg,
            "volume": out["volume"].clamp(0, 1), "log_var": out["log_var"]}


def run(env, out, **kw):
    kw.setdefault("device", "cpu")
    return R.reconstruct(env["pa"], env["lat"], out, checkpoint=env["ckpt"], **{"refine": R.NO_REFINE, **kw})


def expected_hu(env, upscale=None) -> np.ndarray:
    vol = env["volume"] if upscale is None else F.interpolate(env["volume"], size=upscale, mode="trilinear",
                                                              align_corners=False)
    return unit_to_hu(vol)[0, 0].numpy()


# --- outputs ------------------------------------------------------------------------------
def test_nifti_in_hu_with_our_affine(env, tmp_path):
    out = run(env, tmp_path / "deep" / "er" / "ct.nii.gz")  # missing parent folders are created
    assert out == tmp_path / "deep" / "er" / "ct.nii.gz" and out.is_file()
    img = nib.load(out)
    assert img.shape == (N, N, N) and img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.affine, our_affine((N, N, N), (FOV / N,) * 3), atol=1e-4)
    assert nib.aff2axcodes(img.affine) == ("I", "P", "L")
    hu, spacing = load_volume(out)
    np.testing.assert_allclose(hu, np.rint(expected_hu(env)), atol=1.0)  # rounding to int16 (±1 at .5 ties)
    assert np.abs(hu - expected_hu(env)).max() <= 0.5 + 1e-3
    assert spacing == pytest.approx((FOV / N,) * 3)
    assert -1024 <= hu.min() and hu.max() <= 1476  # the model's HU window


def test_npy_format_and_upscale(env, tmp_path):
    size = (20, 24, 28)
    arr = np.load(run(env, tmp_path / "ct.npy", fmt="npy", upscale=size))
    assert arr.dtype == np.float32 and arr.shape == size
    np.testing.assert_allclose(arr, expected_hu(env, size), atol=1e-3)  # trilinear resampling of the prediction


def test_upscaled_nifti_spacing(env, tmp_path):
    size = (8, 12, 20)
    hu, spacing = load_volume(run(env, tmp_path / "up.nii.gz", upscale=size))
    assert hu.shape == size
    assert spacing == pytest.approx(tuple(FOV / s for s in size), rel=1e-6)
    assert np.abs(hu - expected_hu(env, size)).max() <= 0.5 + 1e-3


def test_preview_of_an_anisotropic_upscale_is_drawn_to_scale(env, tmp_path, monkeypatch):
    import xray2ct.viz as viz

    drawn, real = [], viz.save_montage
    monkeypatch.setattr(viz, "save_montage", lambda path, panels, **kw: (drawn.extend(panels), real(path, panels, **kw)))
    run(env, tmp_path / "up.nii.gz", upscale=(8, 12, 20), preview=tmp_path / "p.png")
    assert len(drawn) == 6 and (tmp_path / "p.png").stat().st_size > 1000
    for panel in drawn:  # the field of view is a cube: every slice is square in millimetres
        rows, cols = panel["image"].shape
        assert rows * panel["aspect"] == pytest.approx(cols), panel["title"]
    assert {p["image"].shape for p in drawn} == {(12, 20), (8, 20), (8, 12)}


def test_dicom_series_loads_back_with_simpleitk(env, tmp_path):
    import pydicom
    import SimpleITK as sitk

    size = (12, 16, 20)  # anisotropic, so a swapped axis or spacing shows
    out = run(env, tmp_path / "series", fmt="dicom", upscale=size)
    files = sorted(out.glob("*.dcm"))
    assert len(files) == size[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(out)))
    image = reader.Execute()
    assert image.GetSize() == (size[2], size[1], size[0])  # (x=w, y=h, z=d)
    assert image.GetSpacing() == pytest.approx((FOV / size[2], FOV / size[1], FOV / size[0]), rel=1e-6)
    # LPS: w -> +x (patient left), h -> +y (posterior); GDCM sorts slices feet (-z) to head
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    assert image.GetOrigin() == pytest.approx((-(size[2] - 1) / 2 * FOV / size[2], -(size[1] - 1) / 2 * FOV / size[1],
                                               -(size[0] - 1) / 2 * FOV / size[0]), abs=1e-4)
    arr = sitk.GetArrayFromImage(image).astype(np.float32)[::-1]  # (z up) -> (d head→feet, h, w)
    assert np.abs(arr - expected_hu(env, size)).max() <= 0.5 + 1e-3  # stored as integers via the rescale
    # ctio's DICOM reader (orientation from the headers) gives our (d, h, w) array back
    hu_dicom, sp = load_volume(out)
    np.testing.assert_array_equal(hu_dicom, arr)
    assert sp == pytest.approx(tuple(FOV / s for s in size), rel=1e-5)
    datasets = [pydicom.dcmread(f) for f in files]
    assert {d.SeriesInstanceUID for d in datasets} == {datasets[0].SeriesInstanceUID}
    assert len({d.SOPInstanceUID for d in datasets}) == len(files)
    first = datasets[0]
    assert first.Modality == "CT" and float(first.RescaleIntercept) == -1024 and float(first.RescaleSlope) == 1
    assert list(map(float, first.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0]


def test_dicom_writer_round_trips_an_asymmetric_volume(tmp_path):
    """An untrained model's output is nearly flat; random HU show any flipped or swapped axis."""
    hu = np.random.default_rng(0).integers(-1024, 1476, (5, 6, 7)).astype(np.float32)
    spacing = (3.0, 2.0, 1.5)
    back, sp = load_volume(O.save_dicom_series(tmp_path / "s", hu, spacing))
    np.testing.assert_array_equal(back, hu)
    assert sp == pytest.approx(spacing)


def test_uncertainty_and_preview(env, tmp_path):
    out = run(env, tmp_path / "ct.nii.gz", uncertainty=tmp_path / "std.nii.gz", preview=tmp_path / "p.png")
    std, _ = load_volume(tmp_path / "std.nii.gz")
    np.testing.assert_allclose(std, (torch.exp(0.5 * env["log_var"]) * 2500)[0, 0].numpy(), rtol=1e-5)
    assert (std > 0).all() and out.is_file()
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG"


def test_report_embeds_this_reconstruction(env, tmp_path):
    import base64
    import json
    import re

    run(env, tmp_path / "ct.nii.gz", report=tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r"const DATA = (\{.*?\});\n", html, re.S).group(1).replace("<\\/", "</"))
    hu = np.frombuffer(base64.b64decode(data["volume"]["hu"]), "<i2").reshape(data["volume"]["shape"])
    np.testing.assert_allclose(hu, np.rint(expected_hu(env)), atol=1)  # the volume that was written
    assert data["volume"]["std"] is not None and "phantom_0000_pa_drr.png" in html
    with pytest.raises(R.ReconstructionError, match="html"):
        run(env, tmp_path / "ct2.nii.gz", report=tmp_path / "r.txt")
    with pytest.raises(R.OutputExistsError, match="r.html"):
        run(env, tmp_path / "ct3.nii.gz", report=tmp_path / "r.html")


# --- bad input ----------------------------------------------------------------------------
def _bad_xray(tmp_path, kind) -> Path:
    path = tmp_path / f"{kind}_pa.png"
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "constant":
        Image.fromarray(np.full((40, 40), 77, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("kind,message", [("missing", "not found"), ("corrupt", "damaged|not a recognised"),
                                          ("empty", "empty"), ("constant", "constant")])
def test_bad_xray_names_the_file(env, tmp_path, kind, message):
    bad = _bad_xray(tmp_path, kind)
    with pytest.raises(XRay2CTInputError, match=message) as e:
        R.reconstruct(env["pa"], bad, tmp_path / "o.nii.gz", checkpoint=env["ckpt"], device="cpu")
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "o.nii.gz").exists()


def test_checkpoint_errors(env, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found") as e:
        R.reconstruct(env["pa"], env["lat"], tmp_path / "o.nii.gz", checkpoint=tmp_path / "x.safetensors")
    assert "x.safetensors" in str(e.value)
    corrupt = tmp_path / "c.safetensors"
    corrupt.write_bytes(b"{not a header" * 5)
    with pytest.raises(CheckpointError, match="c.safetensors"):
        R.reconstruct(env["pa"], env["lat"], tmp_path / "o.nii.gz", checkpoint=corrupt)
    # weights of the tiny model under the config of a wider one: the error names layers
    from xray2ct.models import build_model

    other = load_config("configs/cpu-small.json", {**TINY, "model.voxel_dim": 48})
    wrong = save_checkpoint(tmp_path, "wrong", build_model(env["cfg"]), other, step=0, epoch=0)
    with pytest.raises(CheckpointError, match="does not fit this architecture.*shape mismatch"):
        R.reconstruct(env["pa"], env["lat"], tmp_path / "o.nii.gz", checkpoint=wrong)
    monkeypatch.setattr(I, "DEFAULT_WEIGHTS", "assets/not-installed")
    with pytest.raises(CheckpointError, match="no bundled default weights.*--checkpoint"):
        R.reconstruct(env["pa"], env["lat"], tmp_path / "o.nii.gz")
    assert not (tmp_path / "o.nii.gz").exists()


def test_bad_output_arguments(env, tmp_path):
    with pytest.raises(R.ReconstructionError, match="unknown output format 'vtk'"):
        run(env, tmp_path / "o.nii.gz", fmt="vtk")
    with pytest.raises(R.ReconstructionError, match=r"o\.mha.*\.nii\.gz"):
        run(env, tmp_path / "o.mha")
    with pytest.raises(R.ReconstructionError, match="upscale must be three positive integers"):
        run(env, tmp_path / "o.nii.gz", upscale=(16, 0, 16))
    with pytest.raises(R.ReconstructionError, match="no CUDA|unknown device"):
        run(env, tmp_path / "o.nii.gz", device="cuda" if not torch.cuda.is_available() else "gpu")


def test_existing_output_is_refused_unless_overwrite(env, tmp_path):
    out = tmp_path / "ct.nii.gz"
    out.write_bytes(b"precious")
    with pytest.raises(R.OutputExistsError, match="--overwrite") as e:
        run(env, out)
    assert str(out) in str(e.value) and out.read_bytes() == b"precious"
    (tmp_path / "u.nii.gz").write_bytes(b"x")
    with pytest.raises(R.OutputExistsError, match="u.nii.gz"):  # the extras are checked too, before any work
        run(env, tmp_path / "fresh.nii.gz", uncertainty=tmp_path / "u.nii.gz")
    assert not (tmp_path / "fresh.nii.gz").exists()
    run(env, out, overwrite=True)
    assert load_volume(out)[0].shape == (N, N, N)


def test_existing_dicom_folder_is_replaced_only_with_overwrite(env, tmp_path):
    out = tmp_path / "series"
    out.mkdir()
    (out / "old.dcm").write_bytes(b"old")
    with pytest.raises(R.OutputExistsError, match="series"):
        run(env, out, fmt="dicom")
    run(env, out, fmt="dicom", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [f"slice_{k:04d}.dcm" for k in range(1, N + 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # the old folder was removed, no temp left


def test_interrupted_write_leaves_no_file(env, tmp_path, monkeypatch):
    def full_disk(img, filename, *a, **k):
        Path(filename).write_bytes(b"half a NIfTI")  # some bytes reach the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", full_disk)
    out = tmp_path / "ct.nii.gz"
    with pytest.raises(O.OutputWriteError, match="No space left") as e:
        run(env, out)
    assert str(out) in str(e.value)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temp file
    out.write_bytes(b"old")
    with pytest.raises(O.OutputWriteError):
        run(env, out, overwrite=True)
    assert out.read_bytes() == b"old"  # a failed overwrite keeps the previous file


def test_interrupted_dicom_series_leaves_no_folder(env, tmp_path, monkeypatch):
    import pydicom

    real, calls = pydicom.Dataset.save_as, []

    def fail_third(self, filename, *a, **k):
        calls.append(filename)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, filename, *a, **k)

    monkeypatch.setattr(pydicom.Dataset, "save_as", fail_third)
    with pytest.raises(O.OutputWriteError):
        run(env, tmp_path / "series", fmt="dicom")
    assert list(tmp_path.iterdir()) == []


# --- batch ---------------------------------------------------------------------------------
def _good_and_bad_pair(env, tmp_path) -> Path:
    """A batch folder with a good pair and one whose lateral is not an image."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(env["pa"], folder / "good_pa.png")
    shutil.copy(env["lat"], folder / "good_lat.png")
    shutil.copy(env["pa"], folder / "bad_pa.png")
    (folder / "bad_lat.png").write_bytes(b"not an image at all")
    return folder


def test_batch_reports_broken_pairs_and_does_the_rest(env, tmp_path):
    folder = _good_and_bad_pair(env, tmp_path)
    shutil.copy(env["pa"], folder / "lonely_pa_drr.png")
    sub = folder / "case7"  # dataset-style nesting and the _drr naming
    sub.mkdir()
    shutil.copy(env["pa"], sub / "case7_pa_drr.png")
    shutil.copy(env["lat"], sub / "case7_lat_drr.png")
    out = tmp_path / "out"
    report = B.reconstruct_batch(folder, out, checkpoint=env["ckpt"], device="cpu", uncertainty=True, progress=False,
                                 refine=R.NO_REFINE)
    assert sorted(cid for cid, _ in report.done) == ["case7", "good"]
    failed = dict(report.failed)
    assert sorted(failed) == ["bad", "lonely"]
    assert "bad_lat.png" in failed["bad"] and "no lat" in failed["lonely"]
    assert np.abs(load_volume(out / "good.nii.gz")[0] - expected_hu(env)).max() <= 0.5 + 1e-3
    assert (out / "good_uncertainty.nii.gz").is_file() and not (out / "bad.nii.gz").exists()
    again = B.reconstruct_batch(folder, out, checkpoint=env["ckpt"], device="cpu", progress=False, refine=R.NO_REFINE)
    assert sorted(cid for cid, _ in again.skipped) == ["case7", "good"] and not again.done


def test_batch_single_views_reconstructs_a_lonely_film(env, tmp_path):
    """--single-views: a case with one film is done from it alone (as --pa alone), and said so;
    two films of one view stay a problem."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(env["pa"], folder / "good_pa.png")
    shutil.copy(env["lat"], folder / "good_lat.png")
    shutil.copy(env["pa"], folder / "lonely_pa.png")
    shutil.copy(env["pa"], folder / "twice_pa.png")
    shutil.copy(env["pa"], folder / "twice_pa_copy.png")
    out = tmp_path / "out"
    report = B.reconstruct_batch(folder, out, checkpoint=env["ckpt"], device="cpu", progress=False,
                                 refine=R.NO_REFINE, single_views=True)
    assert sorted(cid for cid, _ in report.done) == ["good", "lonely"]
    assert report.one_view == [("lonely", "pa")] and [cid for cid, _ in report.failed] == ["twice"]
    alone = R.reconstruct(env["pa"], None, tmp_path / "alone.nii.gz", checkpoint=env["ckpt"], device="cpu",
                          refine=R.NO_REFINE)
    np.testing.assert_array_equal(load_volume(out / "lonely.nii.gz")[0], load_volume(alone)[0])
    pairs, problems = B.find_pairs(folder)  # without the flag the lonely film is a problem that names the fix
    assert "lonely" not in pairs and "--single-views" in dict(problems)["lonely"]


def test_batch_without_pairs_is_an_error(env, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(R.ReconstructionError, match="no complete X-ray pair"):
        B.reconstruct_batch(tmp_path, tmp_path / "o", checkpoint=env["ckpt"], progress=False, refine=R.NO_REFINE)


# --- command line ----------------------------------------------------------------------------
def test_cli_reconstruct_and_missing_file(env, tmp_path):
    from xray2ct.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["reconstruct", "--no-refine", "--pa", str(env["pa"]), "--lat", str(env["lat"]),
                             "--checkpoint",
                             str(env["ckpt"]), "--out", str(tmp_path / "v.npy"), "--format", "npy",
                             "--device", "cpu", "--upscale", "8", "8", "8"])
    assert ok.exit_code == 0, ok.output
    assert np.load(tmp_path / "v.npy").shape == (8, 8, 8)
    missing = tmp_path / "nope_pa.png"
    res = runner.invoke(app, ["reconstruct", "--no-refine", "--pa", str(missing), "--lat", str(env["lat"]),
                              "--checkpoint", str(env["ckpt"]), "--out", str(tmp_path / "v.nii.gz")])
    assert res.exit_code != 0 and isinstance(res.exception, UserError)
    assert str(missing) in str(res.exception) and "\n" not in str(res.exception)
    usage = runner.invoke(app, ["reconstruct", "--no-refine", "--out", str(tmp_path / "v.nii.gz")])
    assert usage.exit_code == 2 and "--pa" in usage.output


def test_console_script_prints_one_line(env, tmp_path):
    exe = Path(sys.executable).parent / "xray2ct"
    missing = tmp_path / "nope.png"
    proc = subprocess.run([str(exe), "reconstruct", "--no-refine", "--pa", str(missing), "--lat", str(env["lat"]),
                           "--checkpoint",
                           str(env["ckpt"]), "--out", str(tmp_path / "v.nii.gz")],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=120, env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(missing) in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_batch_writes_extras_only_when_asked_and_never_over_existing_ones(env, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for cid in ("a", "b"):
        shutil.copy(env["pa"], folder / f"{cid}_pa.png")
        shutil.copy(env["lat"], folder / f"{cid}_lat.png")
    out = tmp_path / "out"
    plain = B.reconstruct_batch(folder, out, checkpoint=env["ckpt"], device="cpu", progress=False, refine=R.NO_REFINE)
    assert len(plain.done) == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz"]  # no report, preview or std
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / "a_report.html").write_text("precious")
    result = B.reconstruct_batch(folder, out2, checkpoint=env["ckpt"], device="cpu", progress=False,
                                 refine=R.NO_REFINE, report=True)
    assert [cid for cid, _ in result.done] == ["b"] and (out2 / "b_report.html").is_file()
    failed = dict(result.failed)
    assert "a_report.html" in failed["a"] and "--overwrite" in failed["a"]
    assert (out2 / "a_report.html").read_text() == "precious" and not (out2 / "a.nii.gz").exists()
    again = B.reconstruct_batch(folder, out2, checkpoint=env["ckpt"], device="cpu", progress=False,
                                refine=R.NO_REFINE, report=True,
                                overwrite=True)
    assert len(again.done) == 2 and (out2 / "a_report.html").read_text(encoding="utf-8") != "precious"


def test_cli_batch_exits_non_zero_when_a_pair_failed(env, tmp_path):
    from xray2ct.cli import app

    folder = _good_and_bad_pair(env, tmp_path)
    res = CliRunner().invoke(app, ["reconstruct", "--no-refine", "--batch", str(folder), "--out", str(tmp_path / "o"),
                                   "--checkpoint", str(env["ckpt"]), "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert (tmp_path / "o" / "good.nii.gz").is_file() and "bad" in res.output


@pytest.mark.parametrize("upscale, words", [((2000, 8, 8), "1024 voxels per axis"),
                                            ((1024, 1024, 1024), "1,073,741,824")])
def test_upscale_is_bounded(env, tmp_path, upscale, words):
    with pytest.raises(R.ReconstructionError, match="too large") as e:
        run(env, tmp_path / "o.nii.gz", upscale=upscale)
    assert words in str(e.value) and not (tmp_path / "o.nii.gz").exists()
