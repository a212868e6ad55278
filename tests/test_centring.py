"""Where `prepare` cuts the cube from a CT (`xray2ct.data.centring`): around the patient without
the couch, and around the chest in a scan longer than a chest scan, as the training phantoms are."""
from __future__ import annotations

import numpy as np
import pytest


def _torso_on_couch(gap_mm: float, couch_mm: float, spacing=(2.5, 1.0, 1.0)):
    """(HU, spacing, the torso's centre index): an elliptic torso (300 x 220 mm, 200 mm long) in a
    460 mm field, on a couch plate 440 mm wide and couch_mm thick, gap_mm of air (a pad) below
    its back."""
    d, h, w = (int(200 / spacing[0]), int(460 / spacing[1]), int(460 / spacing[2]))
    y = (np.arange(h) - (h - 1) / 2) * spacing[1]  # mm, anterior -> posterior
    x = (np.arange(w) - (w - 1) / 2) * spacing[2]
    torso = (y[:, None] / 110.0) ** 2 + (x[None, :] / 150.0) ** 2 <= 1
    couch = (y[:, None] >= 110.0 + gap_mm) & (y[:, None] < 110.0 + gap_mm + couch_mm) & (np.abs(x[None, :]) <= 220)
    hu = np.full((h, w), -1000.0, np.float32)
    hu[torso], hu[couch] = 40.0, 300.0
    return np.repeat(hu[None], d, axis=0), spacing, np.array([(d - 1) / 2, (h - 1) / 2, (w - 1) / 2])


def _centre_used_by_preprocess(monkeypatch, hu, spacing, size=32):
    """The centre `preprocess` crops its cube around (as `prepare --size N` does)."""
    from xray2ct.data import ctio

    seen = []
    real = ctio.body_center
    monkeypatch.setattr(ctio, "body_center", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    ctio.preprocess(hu, spacing, size=size, fov_mm=320.0)
    return seen[0]


@pytest.mark.parametrize("gap_mm, couch_mm", [(6.0, 30.0), (12.0, 40.0)])
def test_the_body_is_centred_without_its_couch(gap_mm, couch_mm, monkeypatch):
    """A couch below the pad under the back is not part of the patient: the cube is centred on the
    torso, as the training phantoms are. On the 10 mm grid of a 32³ cube (what `preprocess` used
    before) the pad was bridged and the couch counted."""
    hu, spacing, torso = _torso_on_couch(gap_mm, couch_mm)
    found = _centre_used_by_preprocess(monkeypatch, hu, spacing)
    assert np.abs((found - torso) * spacing).max() <= 3.0


def test_leads_and_lines_do_not_move_the_centre():
    """A lead running from the chest to the edge of the field (a 3 mm wire) is opened away."""
    from xray2ct.data.centring import body_center

    hu, spacing, torso = _torso_on_couch(200.0, 0.0)  # no couch in the field
    h0 = int(torso[1])
    hu[:, h0 - 1:h0 + 2, int(torso[2]) + 100:] = 200.0  # from inside the torso to the right edge, 3 x 3 mm
    assert np.abs((body_center(hu, spacing) - torso) * spacing).max() <= 3.0


def test_phantoms_cut_from_a_wide_field_are_centred_as_the_phantoms_are(monkeypatch):
    """`preprocess` of a v2 phantom's 480 mm field (its couch included), as `prepare --size 32` does
    with a real CT, finds the phantom's own centre: the body sits in the cube within its
    generator's ±8 mm jitter (and a grid step), as in training. Before, these three were cut
    12-22 mm towards the back, and the network scored 2-4 dB lower on them."""
    from xray2ct.data.fields import wide_phantom

    for seed in (9_100_000, 9_100_009, 9_100_010):  # couches under the back that a 10 mm grid counted
        field = wide_phantom(96, seed, 320.0, 24)  # 480 mm at 3.33 mm
        centre = _centre_used_by_preprocess(monkeypatch, field, (320.0 / 96,) * 3)
        monkeypatch.undo()
        offset_mm = (centre - (np.array(field.shape) - 1) / 2) * 320.0 / 96
        assert np.abs(offset_mm).max() <= 8.0 + 320.0 / 96, (seed, offset_mm)


def _long_scan(length_mm: float, apex_mm: float | None, spacing=(5.0, 2.0, 2.0)):
    """A torso scanned over length_mm head to feet; lungs (two ellipsoids, 250 mm tall, -850 HU) from
    apex_mm below the top of the scan, a trachea above them; None: no lungs (an abdomen)."""
    d, h, w = int(length_mm / spacing[0]), int(360 / spacing[1]), int(460 / spacing[2])
    z = (np.arange(d) + 0.5)[:, None, None] * spacing[0]  # mm from the top
    y = ((np.arange(h) - (h - 1) / 2) * spacing[1])[None, :, None]
    x = ((np.arange(w) - (w - 1) / 2) * spacing[2])[None, None, :]
    hu = np.where(((y / 110.0) ** 2 + (x / 150.0) ** 2 <= 1) & (z > 0), 40.0, -1000.0).astype(np.float32)
    if apex_mm is not None:
        for side in (-1, 1):
            lung = ((z - apex_mm - 125) / 125) ** 2 + (y / 80.0) ** 2 + ((x - side * 70) / 55.0) ** 2 <= 1
            hu[lung] = -850.0
        hu[((y + 30) ** 2 + x**2 <= 9**2) & (z < apex_mm + 20)] = -1000.0  # the trachea, from the top
    return hu, spacing


@pytest.mark.parametrize("length_mm, apex_mm", [(700.0, 100.0), (900.0, 60.0)])
def test_a_long_scan_is_centred_on_the_chest(length_mm, apex_mm, caplog):
    """A chest-abdomen scan's middle is in the abdomen; the cube is centred 120 mm below the lung
    apex instead, where the phantoms' chest scans are on average, and the log says so. A chest
    scan keeps its middle."""
    from xray2ct.data.centring import APEX_TO_CENTRE_MM, body_center

    hu, spacing = _long_scan(length_mm, apex_mm)
    with caplog.at_level("WARNING", logger="xray2ct.data.ctio"):
        found_mm = (body_center(hu, spacing, name="cap.nii.gz")[0] + 0.5) * spacing[0]
    assert "cap.nii.gz: a scan of" in caplog.text and "centred on the chest" in caplog.text
    assert abs(found_mm - (apex_mm + APEX_TO_CENTRE_MM)) <= 2 * 3.0 + spacing[0]
    chest, spacing = _long_scan(380.0, 40.0)
    assert abs((body_center(chest, spacing)[0] + 0.5) * spacing[0] - 190.0) <= spacing[0]


def test_a_long_scan_without_lungs_keeps_its_middle_and_says_so(caplog):
    from xray2ct.data.centring import body_center

    hu, spacing = _long_scan(600.0, None)
    with caplog.at_level("WARNING"):
        found_mm = (body_center(hu, spacing, name="abdomen.nii.gz")[0] + 0.5) * spacing[0]
    assert abs(found_mm - 300.0) <= spacing[0] and "abdomen.nii.gz" in caplog.text and "no lungs" in caplog.text


def test_a_ct_of_a_phantom_is_prepared_and_scored_as_the_phantom_itself(tmp_path):
    """The real-CT path end to end: a v2 phantom's 480 mm field at 2.5 mm (its couch 1 cm or less
    behind a pad, as a CT holds it) through `prepare --size 32` and `evaluate` with the bundled
    weights scores as the phantom's own cube does. Cut the old way (the couch counted, 17 mm
    towards the back) it scored 3.6 dB lower (docs/RESULTS.md, *Real CTs*)."""
    from xray2ct.data.ctio import save_nifti
    from xray2ct.data.fields import wide_phantom
    from xray2ct.data.layout import write_case
    from xray2ct.data.phantoms import chest_phantom
    from xray2ct.data.prepare import prepare_cts
    from xray2ct.engine.evaluate import evaluate
    from xray2ct.engine.inference import default_checkpoint

    seed = 9_100_009
    save_nifti(tmp_path / "ct.nii.gz", np.rint(wide_phantom(128, seed, 320.0, 32)), 2.5, dtype="int16")
    prepare_cts([tmp_path / "ct.nii.gz"], tmp_path / "prepared", size=32, progress=False)
    write_case(tmp_path / "own", "own", np.rint(chest_phantom(32, seed)).astype(np.float32), (10.0,) * 3, 256)
    score = {name: evaluate(default_checkpoint(), tmp_path / name, split=None, out=tmp_path / f"ev_{name}",
                            device="cpu", montages=0, progress=False, refine=False).per_case[0]["psnr"]
             for name in ("prepared", "own")}
    assert abs(score["prepared"] - score["own"]) <= 1.0, score
