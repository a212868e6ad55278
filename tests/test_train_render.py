"""Training with films rendered per step (data.acquisition.render): a phantom pool of wide
fields, per-sample geometries, deterministic validation, exact resume."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xray2ct.config import load_config
from xray2ct.data.fields import FieldDataset, phantom_pool

from test_train import ROOT, TINY

RENDER = {**TINY, "data.acquisition.render": True, "data.view_dropout": 0.25, "training.batch_size": 1,
          "training.num_epochs": 3, "logging.checkpoint_every_steps": 1}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return phantom_pool(tmp_path_factory.mktemp("pool"), n=4, size=16, margin=4, seed=0)


def test_pool_fields_hold_the_target_cube(pool):
    ds = FieldDataset(pool, "train", volume_size=16, margin=4)
    item = ds[0]
    assert item["field"].shape == (1, 24, 24, 24) and item["ct"].shape == (1, 16, 16, 16) and item["index"] == 0
    from xray2ct.physics.hu import hu_to_unit

    torch.testing.assert_close(hu_to_unit(item["field"][:, 4:20, 4:20, 4:20]), item["ct"])
    assert len(ds) + len(FieldDataset(pool, "val", 16, 4)) + len(FieldDataset(pool, "test", 16, 4)) == 4


def test_three_rendered_steps_resume_exactly(pool, tmp_path):
    from xray2ct.engine.train import train

    cfg = load_config(ROOT / "configs/cpu-small.json", overrides=RENDER)
    straight = train(cfg, tmp_path / "straight", data_dir=pool, device="cpu", progress=False, max_steps=3)
    assert straight.step == 3 and all(h["psnr"] > 0 for h in straight.history)
    train(cfg, tmp_path / "resumed", data_dir=pool, device="cpu", progress=False, max_steps=2)
    resumed = train(cfg, tmp_path / "resumed", data_dir=pool, device="cpu", progress=False, max_steps=3,
                    resume=True)
    assert resumed.step == 3
    a, b = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("straight", "resumed"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert straight.history[-1]["psnr"] == resumed.history[-1]["psnr"]  # the validation films are fixed


def test_validation_acquisitions_are_fixed_half_nominal():
    from xray2ct.engine.films import RenderedInputs

    cfg = load_config(ROOT / "configs/cpu-small.json", overrides=RENDER)
    val = RenderedInputs(cfg, torch.device("cpu"), train=False)
    first = [val.acquisition(i) for i in range(6)]
    val.set_epoch(5)
    assert first == [val.acquisition(i) for i in range(6)]
    assert [a.nominal for a in first] == [True, False] * 3 and all(a.dropped is None for a in first)


def test_prefetched_films_equal_the_synchronous_ones_and_stop_cleanly(pool):
    """`stream` renders the next batch in a background thread on a CPU: same films, same
    order, the loader's error reaches the caller, and leaving the loop early joins the thread."""
    import threading

    from torch.utils.data import DataLoader

    from xray2ct.engine.films import RenderedInputs

    cfg = load_config(ROOT / "configs/cpu-small.json", overrides={**RENDER, "model.volume_size": 16,
                                                                   "data.acquisition.margin_mm": 80.0})
    inputs = RenderedInputs(cfg, torch.device("cpu"), train=True)
    inputs.set_epoch(2)
    loader = DataLoader(FieldDataset(pool, None, volume_size=16, margin=4), batch_size=2)
    expected = [inputs(b) for b in loader]
    streamed = list(inputs.stream(loader))
    assert len(streamed) == len(expected) == 2
    for (x0, c0, g0), (x1, c1, g1) in zip(expected, streamed):
        torch.testing.assert_close(x1, x0, rtol=0, atol=0)
        torch.testing.assert_close(c1, c0, rtol=0, atol=0)
        assert g1 == g0

    for _ in inputs.stream(loader):
        break
    assert not [t for t in threading.enumerate() if t.name.startswith("xray2ct-films")]

    def broken():
        yield next(iter(loader))
        raise ValueError("case 7: unreadable")

    with pytest.raises(ValueError, match="case 7"):
        list(inputs.stream(broken()))


def test_loader_suite_quick_measures_both_paths():
    from xray2ct.benchmark import run_suite

    result = run_suite("loader", quick=True)
    assert result.data["ratio"] > 0 and "Rendered / stored training throughput" in result.markdown
    assert {"stored", "rendered"} <= set(result.data)


def test_ct_folder_fields_use_the_field_file_or_air(tmp_path):
    """A dataset of CTs: `{id}_field.nii.gz` beside the CT gives the wide field, else air around the CT."""
    from xray2ct.data.ctio import save_nifti
    from xray2ct.data.fields import wide_phantom
    from xray2ct.data.prepare import make_phantom_dataset

    make_phantom_dataset(tmp_path, n=2, size=16, xray_size=32, progress=False)
    wide = np.rint(wide_phantom(16, 1, 320.0, 6))  # phantom_0001's anatomy with 6 voxels more per side
    save_nifti(tmp_path / "phantom_0001" / "phantom_0001_field.nii.gz", wide, (20.0,) * 3, dtype="int16")
    ds = FieldDataset(tmp_path, None, volume_size=16, margin=4)
    plain, widened = ds[0], ds[1]
    assert plain["field"].shape == widened["field"].shape == (1, 24, 24, 24)
    margin = torch.ones(24, 24, 24, dtype=torch.bool)
    margin[4:20, 4:20, 4:20] = False
    assert (plain["field"][0][margin] == -1000).all() and (widened["field"][0][margin] > -1000).any()
    torch.testing.assert_close(widened["field"][0], torch.from_numpy(wide[2:-2, 2:-2, 2:-2]).float())
    from xray2ct.physics.hu import hu_to_unit

    for item in (plain, widened):  # the target is the CT, which sits at the field's centre
        torch.testing.assert_close(hu_to_unit(item["field"][:, 4:20, 4:20, 4:20]), item["ct"], atol=1e-6, rtol=0)


def test_a_stale_pool_is_generated_again(tmp_path, caplog):
    folder = phantom_pool(tmp_path, n=2, size=8, margin=1, seed=0)
    fresh = np.load(folder / "phantom_0001.npy")
    np.save(folder / "phantom_0000.npy", np.zeros((10, 10, 10), np.int16))  # as if the generator had changed
    np.save(folder / "phantom_0001.npy", np.zeros((10, 10, 10), np.int16))
    assert phantom_pool(tmp_path, n=2, size=8, margin=1, seed=0) == folder
    assert "generating them again" in caplog.text
    assert np.array_equal(np.load(folder / "phantom_0001.npy"), fresh)


def test_the_pool_is_the_same_for_any_number_of_workers(tmp_path):
    one = phantom_pool(tmp_path / "one", n=3, size=8, margin=1, seed=1, version=4)
    two = phantom_pool(tmp_path / "two", n=3, size=8, margin=1, seed=1, version=4, workers=2)
    for i in range(3):
        a, b = np.load(one / f"phantom_{i:04d}.npy"), np.load(two / f"phantom_{i:04d}.npy")
        assert a.shape == (10, 10, 10) and a.dtype == np.int16 and np.array_equal(a, b)
    assert not np.array_equal(np.load(one / "phantom_0000.npy"), np.load(one / "phantom_0001.npy"))
