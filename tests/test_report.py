"""Self-contained HTML reports: nothing fetched, the data inside decodes to the volume."""
import base64
import json
import re

import numpy as np

from xray2ct.report import evaluation_report, reconstruction_report
from xray2ct.surface import bone_surface


def _data(html: str) -> dict:
    m = re.search(r"const DATA = (\{.*?\});\n", html, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1).replace("<\\/", "</"))


def _no_network(html: str) -> None:
    # no external script, style, image or font: every src/href is a data URI or an anchor
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert all(r.startswith(("data:", "#")) for r in refs), refs
    assert "@import" not in html and "url(http" not in html


def _volume(n=24, seed=0):
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-1000, 1500, size=(n, n, n)).astype(np.float32)
    hu[8:16, 8:16, 8:16] = 1200.0
    return hu


def test_reconstruction_report_embeds_volume_std_mesh_and_metrics(tmp_path):
    hu = _volume()
    std = np.abs(_volume(seed=1)) / 10
    cube = np.full_like(hu, -500.0)
    cube[8:16, 8:16, 8:16] = 1200.0
    mesh = bone_surface(cube, (2.0, 2.0, 2.0))
    xrays = {"PA": np.random.default_rng(2).random((32, 32)), "lateral": np.zeros((32, 32))}
    path = reconstruction_report(tmp_path / "r.html", hu, (2.0, 2.0, 2.0), xrays, std_hu=std,
                                 metrics={"PSNR (dB)": 27.123}, mesh=mesh, title="case <7>")
    html = path.read_text(encoding="utf-8")
    _no_network(html)
    assert "case &lt;7&gt;" in html and "27.12" in html and html.count("data:image/png;base64,") == 2
    data = _data(html)
    vol = data["volume"]
    assert vol["shape"] == [24, 24, 24] and vol["spacing"] == [2.0, 2.0, 2.0]
    decoded = np.frombuffer(base64.b64decode(vol["hu"]), "<i2").reshape(24, 24, 24)
    np.testing.assert_array_equal(decoded, np.rint(hu).astype(np.int16))
    std8 = np.frombuffer(base64.b64decode(vol["std"]), np.uint8).reshape(24, 24, 24)
    assert abs(std8.astype(float) / 255 * vol["std_max"] - np.minimum(std, vol["std_max"])).max() <= vol["std_max"] / 254
    faces = np.frombuffer(base64.b64decode(data["mesh"]["f"]), "<u4").reshape(-1, 3)
    np.testing.assert_array_equal(faces, mesh.faces)
    assert data["mesh"]["faces"] == mesh.num_faces
    for plane in ("axial", "coronal", "sagittal"):
        assert f'id="c-{plane}"' in html and f'id="s-{plane}"' in html


def test_large_mesh_is_thinned_for_the_preview(tmp_path):
    from xray2ct.report import MAX_FACES
    from xray2ct.surface import Mesh

    mesh = Mesh(np.zeros((3, 3), np.float32), np.zeros((MAX_FACES * 2 + 1, 3), np.int32))
    html = reconstruction_report(tmp_path / "r.html", _volume(8), (1.0,) * 3, {"PA": np.zeros((4, 4))}, mesh=mesh)
    data = _data(html.read_text(encoding="utf-8"))["mesh"]
    assert data["faces"] == MAX_FACES * 2 + 1 and len(base64.b64decode(data["f"])) == MAX_FACES * 12


def test_large_volume_is_subsampled(tmp_path):
    hu = np.zeros((300, 200, 130), np.float32)
    html = reconstruction_report(tmp_path / "r.html", hu, (1.0, 1.0, 1.0), {"PA": np.zeros((4, 4))}).read_text(encoding="utf-8")
    vol = _data(html)["volume"]
    assert max(vol["shape"]) <= 128 and vol["spacing"][0] == 3.0 and _data(html)["mesh"] is None


def test_evaluation_report_tables_and_montages(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((10, 20), np.uint8)).save(tmp_path / "case_0001.png")
    summary = {"split": "test", "n_cases": 2, "checkpoint": "run/best.safetensors",
               "metrics": {"psnr": {"mean": 27.5, "ci95": [27.0, 28.0], "n": 2, "protocol": "ours"}}}
    rows = [{"id": "case_0001", "psnr": 27.25}, {"id": "case_0002", "psnr": 27.75}]
    html = evaluation_report(tmp_path / "e.html", summary, rows, montages=[tmp_path / "case_0001.png"],
                             hu=_volume(), spacing=(2.0,) * 3).read_text(encoding="utf-8")
    _no_network(html)
    assert "27.25" in html and "27.75" in html and "27 – 28" in html and "case_0001" in html
    assert _data(html)["volume"]["shape"] == [24, 24, 24]


def test_slices_carry_the_patients_sides_a_numeric_window_and_an_uncertainty_legend(tmp_path):
    from xray2ct.viz import orientation_labels

    hu = _volume()
    films = {"PA": np.zeros((4, 4)), "lateral": np.ones((4, 4))}
    html = reconstruction_report(tmp_path / "r.html", hu, (2.0,) * 3, films,
                                 std_hu=np.full_like(hu, 30.0)).read_text(encoding="utf-8")
    sides = lambda view: dict(re.findall(r'<span class="side (\w+)">(\w)</span>', view))  # noqa: E731
    for plane in ("axial", "coronal", "sagittal"):
        view = re.search(rf'<div class="view"><canvas id="c-{plane}"></canvas>(.*?)</div>', html).group(1)
        assert sides(view) == orientation_labels(plane)
    # the input films too: a PA shows the patient's right on the left, a lateral the front on the left
    pa, lat = re.findall(r'<div class="view"><img [^>]*>(.*?)</div>', html)
    assert sides(pa) == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    assert sides(lat) == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    assert 'id="wl-c" value="40"' in html and 'id="wl-w" value="400"' in html  # soft tissue, the default preset
    assert '<option value="custom">' in html and 'id="readout"' in html
    legend = re.search(r'<span id="legend"[^>]*>(.*?)</span>', html).group(1)
    assert "predicted std" in legend and "30 HU" in legend  # the top of the colour scale, in HU
    plain = reconstruction_report(tmp_path / "p.html", hu, (2.0,) * 3, films).read_text(encoding="utf-8")
    assert 'id="legend"' not in plain and 'id="wl-c"' in plain  # no uncertainty: no legend, still a window


def test_viewer_page_is_the_reports_viewer_alone():
    from xray2ct.report import viewer_page

    cube = np.full((16, 16, 16), -500.0, np.float32)
    cube[4:12, 4:12, 4:12] = 1200.0
    page = viewer_page(cube, (2.0,) * 3, std_hu=np.ones_like(cube), mesh=bone_surface(cube, (2.0,) * 3))
    _no_network(page)
    data = _data(page)
    assert data["volume"]["shape"] == [16, 16, 16] and data["mesh"]["faces"] > 0
    assert data["volume"]["planes"]["sagittal"] == {"axis": 2, "rows": 0, "cols": 1}
    assert '<body class="embedded">' in page and "Input X-rays" not in page and 'id="mesh"' in page
