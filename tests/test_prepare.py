"""Dataset layout (write_case, splits) and the resumable builders in prepare.py."""
from __future__ import annotations

import json
import types

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from xray2ct import Geometry
from xray2ct.data import layout
from xray2ct.data.ctio import load_volume, save_nifti
from xray2ct.data.errors import XRay2CTInputError
from xray2ct.data.prepare import case_id_for, make_phantom_dataset, prepare_cts


def toy_chest(size: int = 32, fov_mm: float = 320.0) -> np.ndarray:
    """Water body with two lungs left and right of a posterior spine, (d, h, w) HU."""
    axis = (np.arange(size) - (size - 1) / 2) * fov_mm / size
    d, h, w = np.meshgrid(axis, axis, axis, indexing="ij")
    hu = np.full((size,) * 3, -1024.0, np.float32)
    hu[(h / 100) ** 2 + (w / 140) ** 2 < 1] = 40
    for side in (-60, 60):
        hu[((h + 10) / 60) ** 2 + ((w - side) / 40) ** 2 < 1] = -800
    hu[(h - 60) ** 2 + w**2 < 20**2] = 700
    return hu


def test_write_case_files_and_bones_bright(tmp_path):
    hu, spacing = toy_chest(), (10.0, 10.0, 10.0)
    folder = layout.write_case(tmp_path, "c1", hu, spacing, xray_size=64)
    assert sorted(p.name for p in folder.iterdir()) == ["c1.nii.gz", "c1_lat_drr.json", "c1_lat_drr.png",
                                                        "c1_pa_drr.json", "c1_pa_drr.png"]
    back, sp = load_volume(folder / "c1.nii.gz")
    np.testing.assert_array_equal(back, np.rint(hu))
    assert sp == spacing
    assert nib.load(folder / "c1.nii.gz").get_data_dtype() == np.int16
    for view in ("pa", "lat"):
        img = Image.open(layout.xray_path(tmp_path, "c1", view))
        assert img.mode == "I;16" and img.size == (64, 64)
        a = np.array(img)
        assert a.max() > 0.9 * 65535 and a.std() > 1000
    pa = np.array(Image.open(layout.xray_path(tmp_path, "c1", "pa")), dtype=float)
    g = Geometry(volume_shape=hu.shape, voxel_mm=spacing, det_shape=(64, 64))
    _, cols, _ = g.project_points(torch.tensor([[0.0, 0.0, 0.0], [0.0, -10.0, 60.0]]), "pa")
    spine, lung = (int(round(c)) for c in cols.tolist())
    rows = slice(24, 40)
    assert pa[rows, spine].mean() > pa[rows, lung].mean() + 0.2 * 65535  # spine bright, lung dark


def test_split_ids_deterministic_and_disjoint():
    ids = [f"case{i:02d}" for i in range(20)]
    a = layout.split_ids(ids, seed=0)
    assert a == layout.split_ids(list(reversed(ids)), seed=0)  # input order does not matter
    assert a != layout.split_ids(ids, seed=1)
    assert [len(a[k]) for k in layout.SPLITS] == [16, 2, 2]
    assert sorted(sum(a.values(), [])) == ids  # every id exactly once
    small = layout.split_ids(["a", "b", "c"], seed=3)
    assert [len(small[k]) for k in layout.SPLITS] == [1, 1, 1]
    with pytest.raises(ValueError, match="fractions"):
        layout.split_ids(ids, fractions=(0.8, 0.3, 0.1))


def test_write_splits_uses_cases_on_disk(tmp_path):
    for i in range(5):
        layout.volume_path(tmp_path, f"p{i}").parent.mkdir()
        layout.volume_path(tmp_path, f"p{i}").touch()
    (tmp_path / "stray").mkdir()  # no volume: not a case
    splits = layout.write_splits(tmp_path, seed=7)
    assert layout.find_cases(tmp_path) == [f"p{i}" for i in range(5)]
    assert json.loads((tmp_path / "splits.json").read_text()) == splits
    assert sorted(sum(splits.values(), [])) == [f"p{i}" for i in range(5)]
    assert splits["val"] and splits["test"]


def test_case_id_sanitized():
    assert case_id_for("/data/LIDC-IDRI-0001") == "LIDC-IDRI-0001"
    assert case_id_for("scans/pat 7 (arterial).nii.gz") == "pat_7_arterial"
    assert case_id_for("x/ct.v2.npy") == "ct_v2"


def test_prepare_cts_resumable_and_keeps_going(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    save_nifti(src / "good.nii.gz", toy_chest(40, 200.0), 5.0)
    np.save(src / "arr.npy", toy_chest(24, 300.0))
    (src / "bad.txt").write_text("not a CT")
    save_nifti(src / "tiny.nii.gz", np.zeros((3, 20, 20)), 1.0)
    paths = [src / n for n in ("good.nii.gz", "bad.txt", "arr.npy", "tiny.nii.gz")]
    out = tmp_path / "out"

    report = prepare_cts(paths, out, size=16, xray_size=32, spacing=12.5, progress=False)
    assert report.done == ["good", "arr"] and report.skipped == []
    failed = dict(report.failed)
    assert set(failed) == {str(src / "bad.txt"), str(src / "tiny.nii.gz")}
    assert "bad.txt" in failed[str(src / "bad.txt")]
    assert "too small" in failed[str(src / "tiny.nii.gz")]
    hu, sp = load_volume(layout.volume_path(out, "good"))
    assert hu.shape == (16, 16, 16) and sp == (20.0, 20.0, 20.0)
    assert sorted(sum(json.loads((out / "splits.json").read_text()).values(), [])) == ["arr", "good"]

    again = prepare_cts(paths, out, size=16, xray_size=32, spacing=12.5, progress=False)
    assert again.done == [] and again.skipped == ["good", "arr"] and len(again.failed) == 2
    assert not [p for p in out.rglob(".*")]  # no temp files left behind


def _phantom_module():
    try:
        from xray2ct.data import phantoms

        return phantoms
    except ImportError:  # phantoms.py not written yet: a stand-in with its signature
        def chest_phantom(size: int, seed: int, fov_mm: float = 320.0) -> np.ndarray:
            hu = toy_chest(size, fov_mm)
            return hu + np.random.default_rng(seed).normal(0, 20, hu.shape).astype(np.float32)

        return types.SimpleNamespace(chest_phantom=chest_phantom)


def test_make_phantom_dataset_resumes_and_seeds_differ(tmp_path, monkeypatch):
    module = _phantom_module()
    real = module.chest_phantom
    calls = []

    def counting(size, seed, fov_mm=320.0, version=2):
        calls.append(seed)
        return real(size, seed, fov_mm=fov_mm, version=version)

    stand_in = types.ModuleType("xray2ct.data.phantoms")
    stand_in.chest_phantom = counting
    stand_in.VERSIONS = module.VERSIONS
    monkeypatch.setitem(__import__("sys").modules, "xray2ct.data.phantoms", stand_in)

    ids = make_phantom_dataset(tmp_path / "a", n=3, size=32, seed=0, xray_size=32, progress=False)
    assert ids == ["phantom_0000", "phantom_0001", "phantom_0002"] == layout.find_cases(tmp_path / "a")
    assert len(set(calls)) == 3 and (tmp_path / "a" / "splits.json").is_file()
    hu, sp = load_volume(layout.volume_path(tmp_path / "a", "phantom_0001"))
    assert hu.shape == (32,) * 3 and sp == (10.0, 10.0, 10.0)

    calls.clear()
    layout.xray_path(tmp_path / "a", "phantom_0002", "lat").unlink()  # an interrupted case
    make_phantom_dataset(tmp_path / "a", n=3, size=32, seed=0, xray_size=32, progress=False)
    assert len(calls) == 1  # only the incomplete case is redone

    make_phantom_dataset(tmp_path / "b", n=1, size=32, seed=1, xray_size=32, progress=False)
    other, _ = load_volume(layout.volume_path(tmp_path / "b", "phantom_0000"))
    first, _ = load_volume(layout.volume_path(tmp_path / "a", "phantom_0000"))
    assert not np.array_equal(first, other)  # another seed, another dataset


def test_phantom_workers_write_the_same_dataset(tmp_path):
    make_phantom_dataset(tmp_path / "serial", n=3, size=16, seed=2, xray_size=24, progress=False)
    make_phantom_dataset(tmp_path / "parallel", n=3, size=16, seed=2, xray_size=24, progress=False, workers=2)
    for case_id in layout.find_cases(tmp_path / "serial"):
        a, _ = load_volume(layout.volume_path(tmp_path / "serial", case_id))
        b, _ = load_volume(layout.volume_path(tmp_path / "parallel", case_id))
        np.testing.assert_array_equal(a, b)
        for view in ("pa", "lat"):
            assert (layout.xray_path(tmp_path / "serial", case_id, view).read_bytes()
                    == layout.xray_path(tmp_path / "parallel", case_id, view).read_bytes())
    assert (tmp_path / "serial/splits.json").read_text() == (tmp_path / "parallel/splits.json").read_text()


def test_split_files_keep_the_test_list_and_carve_val_from_train(tmp_path, caplog):
    from xray2ct.data.splitfile import parse_split_files, splits_from_files

    cases = [f"LIDC-IDRI-{i:04d}" for i in range(1, 41)]
    (tmp_path / "train.txt").write_text("\n".join(f"{c}.20000101.30005{i}.1" for i, c in enumerate(cases[:36])) + "\n\n")
    (tmp_path / "test.txt").write_text("\n".join(cases[36:] + ["LIDC-IDRI-0999"]) + "\n")
    files = parse_split_files([f"train={tmp_path / 'train.txt'}", f"test={tmp_path / 'test.txt'}"])
    splits = splits_from_files(files, cases, seed=3)
    assert splits["test"] == cases[36:]  # the paper's test list, exactly
    assert len(splits["val"]) == 2 and sorted(splits["train"] + splits["val"]) == cases[:36]
    assert splits_from_files(files, cases, seed=3) == splits  # seeded
    assert "LIDC-IDRI-0999" in caplog.text  # listed, not prepared

    # X2CT-GAN's lists name scans: LIDC-IDRI-0442 has one in each; one case per patient, test wins
    (tmp_path / "val.txt").write_text(f"{cases[0]}.1\n{cases[37]}.2\n")
    caplog.clear()
    overlapping = splits_from_files({**files, "val": tmp_path / "val.txt"}, cases)
    assert overlapping["test"] == cases[36:] and overlapping["val"] == [cases[0]]
    assert cases[0] not in overlapping["train"] and len(overlapping["train"]) == 35
    assert f"{cases[37]} is in the test list too" in caplog.text
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(XRay2CTInputError, match="lists no IDs"):
        splits_from_files({"test": tmp_path / "empty.txt"}, cases)
    for bad in ("train", "dev=a.txt", "train=a.txt train=b.txt"):
        with pytest.raises(XRay2CTInputError, match="train"):
            parse_split_files(bad.split(" "))


def test_presets_fix_what_makes_them_comparable():
    from xray2ct.data.presets import make_cube, resolve_preset

    x2ct = resolve_preset("x2ct", xray_size=64)
    assert (x2ct.size, x2ct.fov_mm, x2ct.resample_mm, x2ct.xray_size) == (128, 320.0, 1.0, 64)
    assert resolve_preset("ours", size=32).size == 32
    with pytest.raises(XRay2CTInputError, match="fixes fov_mm 320"):
        resolve_preset("x2ct", fov_mm=300.0)
    with pytest.raises(XRay2CTInputError, match="valid: ours, x2ct"):
        resolve_preset("x2ctgan")
    hu = toy_chest(40, 200.0)  # 5 mm voxels: the 1 mm resampling step is a 5x upsampling
    hu[18:22, 28:32, 18:22] = 3000  # a 20 mm block of metal: clipped to the window's top
    cube = make_cube(hu, (5.0, 5.0, 5.0), x2ct)
    assert cube.shape == (128,) * 3 and cube.min() == -1024 and cube.max() == 1476
    # the 200 mm chest sits in the middle of the 320 mm cube: 24 voxels of air on every side
    inside = np.argwhere(cube > -900)
    assert inside.min(0) == pytest.approx([24] * 3, abs=2) and inside.max(0) == pytest.approx([103] * 3, abs=2)


def test_prepare_workers_write_the_same_cases_and_a_repeated_input_is_one(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    save_nifti(src / "a.nii.gz", toy_chest(40, 200.0), 5.0)
    save_nifti(src / "b.nii.gz", toy_chest(24, 300.0)[::-1].copy(), 12.5)
    paths = [src / "a.nii.gz", src / "b.nii.gz", src / ".." / "src" / "a.nii.gz"]
    serial = prepare_cts(paths, tmp_path / "serial", size=16, xray_size=24, progress=False)
    parallel = prepare_cts(paths, tmp_path / "parallel", size=16, xray_size=24, progress=False, workers=2)
    assert serial.done == ["a", "b"] and sorted(parallel.done) == ["a", "b"] and not parallel.failed
    for case_id in ("a", "b"):
        for f in layout.case_files(tmp_path / "serial", case_id):
            assert f.read_bytes() == (tmp_path / "parallel" / case_id / f.name).read_bytes()


def test_a_folder_cut_before_the_couch_was_left_out_takes_no_new_cases(tmp_path):
    """prepare.json records where cubes are cut; a folder from before it said (cubes centred on the
    body and any couch near it) is refused rather than mixed, with the way out."""
    from xray2ct.data.errors import XRay2CTInputError
    from xray2ct.data.centring import CENTRING

    src = tmp_path / "a.nii.gz"
    save_nifti(src, toy_chest(40, 200.0), 5.0)
    out = tmp_path / "out"
    prepare_cts([src], out, size=16, xray_size=32, progress=False)
    settings = json.loads((out / "prepare.json").read_text())
    assert settings["centring"] == CENTRING
    del settings["centring"]  # as written before 2026-12-01
    (out / "prepare.json").write_text(json.dumps(settings))
    with pytest.raises(XRay2CTInputError, match=r"centring body and couch.*another --out"):
        prepare_cts([src], out, size=16, xray_size=32, progress=False)
