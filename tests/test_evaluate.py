"""`xray2ct evaluate` on a tiny untrained model and four 16³ phantoms: files, numbers, errors."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from xray2ct.checkpoint import CheckpointError, load_model
from xray2ct.config import load_config
from xray2ct.data.dataset import BiplanarDataset
from xray2ct.data.errors import XRay2CTInputError
from xray2ct.engine.evaluate import METRICS, evaluate, projection_errors, summarize
from xray2ct.metrics import all_metrics

from _tiny import N, S, tiny_run
from _tiny import TINY_MODEL as TINY


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint file, dataset root with 4 phantoms) shared by the tests of this module."""
    return tiny_run(tmp_path_factory.mktemp("eval"), n_cases=4, step=7)


@pytest.fixture(scope="module")
def result(setup, tmp_path_factory):
    ckpt, data = setup
    out = tmp_path_factory.mktemp("eval_out")
    return evaluate(ckpt, data, split=None, out=out, device="cpu", batch_size=3, montages=1, progress=False)


def test_writes_per_case_csv_and_summary(result):
    with open(result.out / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "psnr", "ssim3d", "mae_hu", "x2ct_psnr", "x2ct_psnr_3d", "x2ct_ssim", "x2ct_mae",
                             "x2ct_mse", "proj_xray_mad", "proj_rel_l1",  # then, refined as reconstruct does by default:
                             "network_psnr", "refined", "refine_seconds", "refine_unexplained", "refine_prior_raised"]
    assert all(r["refined"] == "1" for r in rows)  # nominal DRRs: nothing beyond the field
    assert [r["id"] for r in rows] == [f"phantom_{i:04d}" for i in range(4)]  # every case once, batches of 3 + 1
    summary = json.loads((result.out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["n_cases"] == 4 and summary["step"] == 7
    for name, s in summary["metrics"].items():
        column = np.array([float(r[name]) for r in rows])
        assert np.isfinite(column).all()
        assert s["n"] == 4
        assert s["mean"] == pytest.approx(column.mean(), rel=1e-9)
        assert s["std"] == pytest.approx(column.std(ddof=1), rel=1e-9)
        lo, hi = s["ci95"]
        assert lo < s["mean"] < hi
        assert s["protocol"] == METRICS[name][0]
    for name in ("x2ct_psnr", "x2ct_psnr_3d", "x2ct_ssim", "x2ct_mae", "x2ct_mse"):
        assert summary["metrics"][name]["protocol"] == "X2CT-GAN"
    assert "PSNR-avg" in summary["metrics"]["x2ct_psnr"]["description"]
    assert summary["metrics"]["psnr"]["protocol"] == "ours"


def test_montages_for_the_first_cases_only(result):
    files = sorted((result.out / "montages").iterdir())
    assert [p.name for p in files] == ["phantom_0000.png"] and result.montages == files
    with Image.open(files[0]) as im:
        assert im.format == "PNG" and min(im.size) > 300


def test_metrics_equal_those_on_the_model_output(setup, result, tmp_path):
    """--no-refine scores the network's output; the default's `network_psnr` is the same number."""
    ckpt, data = setup
    model, cfg, _ = load_model(ckpt)
    item = BiplanarDataset(data, split=None, xray_size=S, volume_size=N)[2]
    with torch.no_grad():
        pred = model(torch.cat([item["pa"], item["lat"]])[None])["volume"].clamp(0, 1)
    direct = all_metrics(pred, item["ct"][None])
    network = evaluate(ckpt, data, split=None, out=tmp_path / "net", device="cpu", montages=0, progress=False,
                       refine=False)
    assert network.summary["refinement"] == {"refined": False, "mode": "off", "why": "--no-refine"}
    row = next(r for r in network.per_case if r["id"] == item["id"])
    assert "network_psnr" not in row
    for name, value in direct.items():
        assert row[name] == pytest.approx(float(value), rel=1e-4, abs=1e-6), name
    refined = next(r for r in result.per_case if r["id"] == item["id"])
    assert refined["network_psnr"] == pytest.approx(float(direct["psnr"]), rel=1e-4)
    assert refined["psnr"] != pytest.approx(refined["network_psnr"], abs=1e-3)  # the default scores the refined volume


def test_projection_errors_vanish_for_the_ground_truth(setup):
    """The input DRRs were rendered from the ground truth: re-projecting it must reproduce
    them (this checks geometry, orientation and normalization), an empty volume must not."""
    _, data = setup
    cfg = load_config("configs/cpu-small.json", TINY)
    item = BiplanarDataset(data, split=None, xray_size=S, volume_size=N)[0]
    ct, xrays = item["ct"][None], torch.cat([item["pa"], item["lat"]])[None]
    truth = projection_errors(ct, ct, xrays, cfg)
    assert truth["proj_rel_l1"].item() == 0.0
    assert truth["proj_xray_mad"].item() < 0.005  # 16-bit PNG rounding only
    flipped = projection_errors(ct.flip(-1), ct, xrays, cfg)  # mirrored left-right: lateral view differs
    assert flipped["proj_xray_mad"].item() > 20 * truth["proj_xray_mad"].item()
    empty = projection_errors(torch.zeros_like(ct), ct, xrays, cfg)
    assert empty["proj_rel_l1"].item() == pytest.approx(1.0, abs=1e-6)  # air projects to nothing


def test_summarize_t_interval():
    s = summarize([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2) from the table, std = 1
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0) and s["n"] == 3
    assert s["ci95"] == pytest.approx([2 - half, 2 + half])
    single = summarize([5.0])
    assert single == {"mean": 5.0, "std": None, "ci95": None, "n": 1}


def test_default_out_folder_and_cli_table(setup):
    from xray2ct.cli import app

    ckpt, data = setup
    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(ckpt.parent), "--data", str(data),
                                   "--device", "cpu", "--montages", "0"])
    assert res.exit_code == 0, res.output
    out = ckpt.parent / "eval_test"  # beside the checkpoint, named after the split
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "test" and summary["n_cases"] == len(json.loads((data / "splits.json").read_text())["test"])
    assert "x2ct_ssim" in res.output and "X2CT-GAN" in res.output and "test split" in res.output
    assert not (out / "montages").exists()
    every = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(ckpt.parent), "--data", str(data),
                                     "--split", "all", "--device", "cpu", "--montages", "0", "--no-refine"])
    assert every.exit_code == 0 and "all split" in every.output and "None split" not in every.output, every.output


def test_report_has_every_case_and_the_summary(setup, tmp_path):
    ckpt, data = setup
    res = evaluate(ckpt, data, split=None, out=tmp_path / "ev", device="cpu", montages=1, progress=False, report=True)
    html = (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert all(row["id"] in html for row in res.per_case)
    assert f"{res.summary['metrics']['psnr']['mean']:.4g}" in html and "data:image/png;base64," in html


def test_folder_without_cases_is_a_clear_error(setup, tmp_path):
    ckpt, _ = setup
    (tmp_path / "empty").mkdir()
    with pytest.raises(XRay2CTInputError, match="no cases found") as e:
        evaluate(ckpt, tmp_path / "empty", out=tmp_path / "o", device="cpu", progress=False)
    assert str(tmp_path / "empty") in str(e.value)


def test_missing_or_corrupt_checkpoint(setup, tmp_path):
    _, data = setup
    with pytest.raises(CheckpointError, match="not found") as e:
        evaluate(tmp_path / "nope.safetensors", data, device="cpu", progress=False)
    assert "nope.safetensors" in str(e.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        evaluate(bad, data, device="cpu", progress=False)


def test_one_view_evaluation_withholds_the_other_view(setup, tmp_path, monkeypatch):
    """--views pa: the model sees zeros for the lateral (as `reconstruct --pa` alone), refinement
    compares with the PA only, and the summary says which mode was scored."""
    from xray2ct.engine.inference import ReconstructionError

    ckpt, data = setup
    import xray2ct.engine.inference as I

    seen = []
    real_predict = I.predict
    monkeypatch.setattr(I, "predict", lambda m, x, d: seen.append(x.clone()) or real_predict(m, x, d))
    res = evaluate(ckpt, data, split=None, out=tmp_path / "pa", device="cpu", batch_size=2, montages=0,
                   progress=False, views="pa", refine=True)
    assert res.summary["views"] == "pa" and res.summary["n_cases"] == 4
    assert all(x[:, 1].abs().max() == 0 and x[:, 0].abs().max() > 0 for x in seen)
    assert all(math.isfinite(r["psnr"]) and math.isfinite(r["network_psnr"]) for r in res.per_case)
    with pytest.raises(ReconstructionError, match="--views"):
        evaluate(ckpt, data, split=None, out=tmp_path / "bad", device="cpu", views="side", progress=False)


def test_default_keeps_the_network_volume_of_a_model_without_uncertainty(setup, monkeypatch, tmp_path):
    """As `reconstruct`: refinement weighs its prior by the network's σ; a model that predicts none is
    scored on its own volume by default, and says why, where --refine refuses."""
    import xray2ct.engine.inference as I
    from xray2ct.engine.inference import ReconstructionError

    ckpt, data = setup
    real_predict = I.predict
    monkeypatch.setattr(I, "predict", lambda m, x, d: (real_predict(m, x, d)[0], None))
    res = evaluate(ckpt, data, split=None, out=tmp_path / "auto", device="cpu", montages=0, progress=False)
    assert res.summary["refinement"]["refined"] is False and "uncertainty" in res.summary["refinement"]["why"]
    assert all("network_psnr" not in r for r in res.per_case)
    with pytest.raises(ReconstructionError, match="no log_var"):
        evaluate(ckpt, data, split=None, out=tmp_path / "forced", device="cpu", montages=0, progress=False, refine=True)
