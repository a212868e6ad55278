"""BiplanarDataset on a tiny hand-built folder: namings, splits, resizing, cache, augmentation, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from xray2ct.data import dataset as dataset_mod
from xray2ct.data.ctio import save_nifti
from xray2ct.data.dataset import BiplanarDataset
from xray2ct.data.errors import XRay2CTInputError
from xray2ct.data.layout import split_ids
from xray2ct.physics.hu import hu_to_unit
from xray2ct.physics.radiograph import RadiographStyle

S = 32


def phantom_hu(shape, seed: int) -> np.ndarray:
    """Air around a water ellipsoid with a bone core, integer HU."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    hu = np.where(r < 0.8, 0.0, -1000.0) + np.where(r < 0.3, 1000.0, 0.0)
    return (hu + rng.integers(-20, 20, shape)).astype(np.float32)


def film(seed: int, h: int = 40, w: int = 40) -> np.ndarray:
    """[0, 1] image with structure (never constant)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    return np.clip(0.2 + 0.5 * np.exp(-((x - 0.5) ** 2) / 0.01) + 0.3 * y * (seed % 3 + 1) / 3, 0, 1)


def png(path, img, bits=16):
    dtype, peak = (np.uint16, 65535) if bits == 16 else (np.uint8, 255)
    Image.fromarray(np.round(img * peak).astype(dtype)).save(path)


# case id -> (volume file, pa file, lat file); names cover every accepted naming
LAYOUT = {
    "c0": ("c0.nii.gz", "c0_pa_drr.png", "c0_lat_drr.png"),
    "c1": ("ct_volume.nii.gz", "drr_frontal.png", "drr_lateral.png"),
    "c2": ("c2.npy", "c2_pa_drr.npy", "c2_lat_drr.png"),
    "c3": ("c3.nii", "c3_pa_drr.png", "drr_lateral.png"),
}
SHAPES = {"c0": (16, 16, 16), "c1": (16, 16, 16), "c2": (12, 16, 20), "c3": (16, 16, 16)}


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "data"
    for k, (cid, (vol, pa, lat)) in enumerate(LAYOUT.items()):
        folder = root / cid
        folder.mkdir(parents=True)
        hu = phantom_hu(SHAPES[cid], k)
        if vol.endswith(".npy"):
            np.save(folder / vol, hu)
        else:
            save_nifti(folder / vol, hu, (1.5, 1.0, 1.0))
        if pa.endswith(".npy"):
            np.save(folder / pa, film(k))
        else:
            png(folder / pa, film(k), bits=16)
        png(folder / lat, film(k + 1, 40, 60), bits=8)  # 8-bit, non-square
    (root / "logs").mkdir()
    (root / "logs" / "train.txt").write_text("not a case")
    return root


def test_items_have_contract_shapes_dtypes_and_ranges(root):
    ds = BiplanarDataset(root, split=None, xray_size=S)
    assert ds.ids == ["c0", "c1", "c2", "c3"] and len(ds) == 4
    for k, cid in enumerate(ds.ids):
        item = ds[k]
        assert item["id"] == cid
        for view in ("pa", "lat"):
            assert item[view].shape == (1, S, S) and item[view].dtype == torch.float32
            assert item[view].min() == 0 and item[view].max() == 1
        assert item["ct"].shape == (1, *SHAPES[cid]) and item["ct"].dtype == torch.float32
        expected = hu_to_unit(torch.from_numpy(phantom_hu(SHAPES[cid], k)))
        assert torch.allclose(item["ct"][0], expected, atol=1e-6)  # NIfTI int16 and .npy round trips exact


def test_alternative_namings_are_found(root):
    cases = {c.id: c for c in BiplanarDataset(root, split=None).cases}
    for cid, names in LAYOUT.items():
        assert (cases[cid].ct.name, cases[cid].pa.name, cases[cid].lat.name) == names


def test_volume_resize(root):
    small = BiplanarDataset(root, split=None, volume_size=8)
    full = BiplanarDataset(root, split=None)
    for k in range(len(small)):
        a, b = small[k]["ct"], full[k]["ct"]
        assert a.shape == (1, 8, 8, 8)
        if b.shape == (1, 16, 16, 16):  # 2x shrink by area averaging keeps the mean exactly
            assert torch.isclose(a.mean(), b.mean(), atol=1e-5)
    big = BiplanarDataset(root, split=None, volume_size=24)
    ct = big[2]["ct"]  # 12x16x20 -> 24^3, trilinear
    assert ct.shape == (1, 24, 24, 24)
    assert ct.min() >= full[2]["ct"].min() - 1e-6 and ct.max() <= full[2]["ct"].max() + 1e-6


def test_dataloader_batches(root):
    loader = DataLoader(BiplanarDataset(root, split=None, xray_size=S, volume_size=8), batch_size=2)
    batch = next(iter(loader))
    assert batch["pa"].shape == (2, 1, S, S) and batch["ct"].shape == (2, 1, 8, 8, 8)
    assert batch["id"] == ["c0", "c1"]


def test_splits_json_is_used(root):
    (root / "splits.json").write_text(json.dumps({"train": ["c0", "c3", "c1"], "val": ["c2"], "test": []}))
    assert BiplanarDataset(root, split="train").ids == ["c0", "c1", "c3"]
    assert BiplanarDataset(root, split="val").ids == ["c2"]
    assert len(BiplanarDataset(root, split=None)) == 4
    with pytest.raises(XRay2CTInputError, match="holds no usable case"):
        BiplanarDataset(root, split="test")
    with pytest.raises(XRay2CTInputError) as info:
        BiplanarDataset(root, split="training")
    msg = str(info.value)
    assert "'training'" in msg and "'train'" in msg and "'val'" in msg and "splits.json" in msg


def test_splits_json_errors(root):
    path = root / "splits.json"
    path.write_text("{not json")
    with pytest.raises(XRay2CTInputError, match="splits.json: not valid JSON"):
        BiplanarDataset(root)
    path.write_text(json.dumps({"train": "c0"}))
    with pytest.raises(XRay2CTInputError, match="expected"):
        BiplanarDataset(root)
    path.write_text(json.dumps({"train": ["c0", "ghost"]}))
    with pytest.raises(XRay2CTInputError, match="ghost"):
        BiplanarDataset(root)
    with pytest.warns(UserWarning, match="ghost"):
        assert BiplanarDataset(root, strict=False).ids == ["c0"]


def test_automatic_split_is_a_seeded_partition(root):
    parts = {s: BiplanarDataset(root, split=s, seed=3).ids for s in ("train", "val", "test")}
    assert sorted(sum(parts.values(), [])) == ["c0", "c1", "c2", "c3"]
    assert all(parts.values())  # 4 cases: 2 train, 1 val, 1 test
    assert parts == split_ids(["c0", "c1", "c2", "c3"], seed=3)
    assert parts["val"] == BiplanarDataset(root, split="val", seed=3).ids  # deterministic
    with pytest.raises(XRay2CTInputError, match="valid: train, val, test"):
        BiplanarDataset(root, split="holdout")


def test_cache_returns_equal_tensors_without_decoding_again(root, monkeypatch):
    calls = []
    real = dataset_mod.load_xray
    monkeypatch.setattr(dataset_mod, "load_xray", lambda *a, **k: calls.append(a) or real(*a, **k))
    cached = BiplanarDataset(root, split=None, xray_size=S, cache=True)
    first = cached[1]
    first["pa"].zero_()  # a caller writing into an item must not corrupt the cache
    second = cached[1]
    assert len(calls) == 2  # pa + lat decoded once
    fresh = BiplanarDataset(root, split=None, xray_size=S)[1]
    for key in ("pa", "lat", "ct"):
        assert torch.equal(second[key], fresh[key])


def test_augmentation_is_reproducible_per_seed_index_epoch(root):
    style = RadiographStyle(noise=0.05)

    def make(seed=0):
        return BiplanarDataset(root, split=None, xray_size=S, augment=style, seed=seed, cache=True)

    a, b = make(), make()
    plain = BiplanarDataset(root, split=None, xray_size=S)[0]
    x, y = a[0], b[0]
    assert torch.equal(x["pa"], y["pa"]) and torch.equal(x["lat"], y["lat"])
    assert torch.equal(a[0]["pa"], x["pa"])  # same instance, same epoch: same draw again
    assert not torch.allclose(x["pa"], plain["pa"], atol=1e-3)  # it does augment
    assert torch.equal(x["ct"], plain["ct"])  # the target is never augmented
    assert x["pa"].min() >= 0 and x["pa"].max() <= 1
    a.set_epoch(1)
    assert not torch.allclose(a[0]["pa"], x["pa"], atol=1e-3)
    b.set_epoch(1)
    assert torch.equal(a[0]["pa"], b[0]["pa"])
    assert not torch.allclose(make(seed=1)[0]["pa"], x["pa"], atol=1e-3)
    assert not torch.allclose(a[1]["pa"], a[0]["pa"], atol=1e-3)


def test_missing_lateral_names_case_and_file(root):
    (root / "c1" / "drr_lateral.png").unlink()
    with pytest.raises(XRay2CTInputError) as info:
        BiplanarDataset(root, split=None)
    msg = str(info.value)
    assert "'c1'" in msg and "lateral" in msg and "c1_lat_drr.png" in msg and "drr_lateral.png" in msg
    assert "'c0'" not in msg
    cases, problems = BiplanarDataset.scan(root)
    assert [c.id for c in cases] == ["c0", "c2", "c3"]
    assert [p.case_id for p in problems] == ["c1"] and "lateral X-ray" in str(problems[0])
    with pytest.warns(UserWarning, match="c1"):
        ds = BiplanarDataset(root, split=None, strict=False)
    assert ds.ids == ["c0", "c2", "c3"]


def test_missing_volume_and_pa_are_reported(root):
    (root / "c0" / "c0.nii.gz").unlink()
    (root / "c2" / "c2_pa_drr.npy").unlink()
    _, problems = BiplanarDataset.scan(root)
    msgs = {p.case_id: p.message for p in problems}
    assert set(msgs) == {"c0", "c2"}
    assert "CT volume" in msgs["c0"] and "c0.nii.gz" in msgs["c0"]
    assert "PA X-ray" in msgs["c2"] and "c2_pa_drr.png" in msgs["c2"]


def test_automatic_split_does_not_move_when_a_case_breaks(root):
    before = BiplanarDataset(root, split="train", seed=5).ids
    broken = before[0]
    for f in (root / broken).iterdir():
        if "lat" in f.name:
            f.unlink()
    with pytest.warns(UserWarning):
        after = BiplanarDataset(root, split="train", seed=5, strict=False).ids
    assert after == [i for i in before if i != broken]


def test_bad_roots(tmp_path, root):
    with pytest.raises(XRay2CTInputError, match="not found"):
        BiplanarDataset(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(XRay2CTInputError, match="is a file"):
        BiplanarDataset(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(XRay2CTInputError) as info:
        BiplanarDataset(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value) and "{id}_pa_drr.png" in str(info.value)
    with pytest.raises(XRay2CTInputError, match="parent"):
        BiplanarDataset(root / "c0")  # a case folder, not the dataset root


def test_bad_sizes(root):
    with pytest.raises(XRay2CTInputError, match="xray_size"):
        BiplanarDataset(root, xray_size=0)
    with pytest.raises(XRay2CTInputError, match="volume_size"):
        BiplanarDataset(root, volume_size=-4)


def test_normalized_volume_warns(root):
    np.save(root / "c2" / "c2.npy", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    ds = BiplanarDataset(root, split=None)
    with pytest.warns(UserWarning, match="Hounsfield"):
        ds[ds.ids.index("c2")]


def test_broken_image_in_a_case_names_the_file(root):
    (root / "c3" / "c3_pa_drr.png").write_bytes(b"")
    ds = BiplanarDataset(root, split=None)
    with pytest.raises(XRay2CTInputError, match="c3_pa_drr.png: file is empty"):
        ds[3]
