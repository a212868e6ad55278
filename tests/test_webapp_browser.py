"""End to end: `xray2ct serve` on a free loopback port, driven by Playwright in headless Chromium.

Needs Debian's chromium (`apt-get install chromium`; `.ci/run` installs it) and the
playwright Python package (a dev dependency); Playwright's own browser download is not
used. Screenshots go to $XRAY2CT_TEST_ARTIFACTS (default `test-artifacts/`).
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from xray2ct.engine.demo import bundled_examples


def phantom_examples():
    """The bundled phantom DRR pairs (training geometry, refined by default; the DICOM pair is a wide film)."""
    return [e for e in bundled_examples(pairs_only=True) if e.id.startswith("phantom_")]

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("XRAY2CT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("XRAY2CT_TEST_ARTIFACTS", "test-artifacts"))
# as root, in a closed network: no sandbox, and no background calls home that the network refuses
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update",
                 "--enable-unsafe-swiftshader"]  # software WebGL for the 3D surface viewer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does)")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    exe = Path(sys.executable).with_name("xray2ct")
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail(f"server did not answer within 60 s: {log.read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1400, "height": 1400})
        browser.close()


def _upload(page, pa: Path, lat: Path) -> None:
    from playwright.sync_api import expect

    for elem, path in (("#pa-upload", pa), ("#lat-upload", lat)):
        clear = page.locator(f"{elem} button[aria-label=Clear]")
        if clear.count():  # a file is there already: remove it, which brings the file input back
            clear.click()
        page.set_input_files(f"{elem} input[type=file]", str(path))
        # the upload finished (the page shows the name with the suffix apart)
        expect(page.locator(elem)).to_contain_text(path.stem, timeout=30_000)


# JavaScript run on a canvas: its pixels as [[r, g, b], ...] rows are not needed, counts are
LIT = ("cv => { const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;"
       " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 128; return n; }")
LIT_PIXELS = ("cv => { const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data, out = [];"
              " for (let i = 0; i < d.length; i += 4) if (d[i] > 128) out.push([Math.floor(i / 4 / cv.width),"
              " (i / 4) % cv.width]); return out; }")


def _assert_shaded(png: bytes, background=(17, 17, 17)) -> None:
    """A screenshot of the bone surface canvas: many surface pixels, bright on average and in many
    shades (lit by their normals), not a uniformly dark silhouette."""
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    surface = rgb[np.abs(rgb - background).sum(-1) > 12]
    grey = surface.mean(-1)
    assert len(surface) > 2000, f"only {len(surface)} surface pixels"
    assert np.median(grey) > 90, f"surface too dark: median grey {np.median(grey):.0f}"
    assert len(np.unique(grey.round(-1))) >= 8, "one flat colour: not shaded"


def test_upload_reconstruct_view_and_download(server, page, tmp_path):
    from playwright.sync_api import expect

    ex = next(e for e in phantom_examples() if e.ct is not None)
    page.goto(server)
    _upload(page, ex.pa, ex.lat)
    for elem in ("#pa-thumb", "#lat-thumb"):  # what the model will read, before reconstructing
        expect(page.locator(f"{elem} img")).to_be_visible(timeout=20_000)
    started = time.monotonic()
    page.click("#reconstruct")
    downloads = page.locator("#downloads")
    expect(downloads).to_contain_text("report", timeout=60_000)
    elapsed = time.monotonic() - started
    expect(page.locator("#status")).to_contain_text("PSNR")
    expect(page.locator("#status")).to_contain_text("Refined against the X-rays")  # on by default
    expect(page.locator("#physics")).to_contain_text("after refinement")  # inputs against the result's DRRs
    for name in ("ct.nii", "uncertainty_std.nii", "bone_surface", "report"):
        expect(downloads).to_contain_text(name)

    # the viewer: the report's own, in an iframe
    frame = page.frame_locator("#viewer iframe")
    for plane in ("axial", "coronal", "sagittal"):
        expect(frame.locator(f"#c-{plane}")).to_be_visible(timeout=10_000)
    expect(frame.locator("#c-axial ~ .side.left")).to_have_text("R")
    expect(frame.locator("#mesh[data-rendered]")).to_be_attached(timeout=5_000)  # shaded at once, not after 5-12 s
    _assert_shaded(frame.locator("#mesh").screenshot())
    frame.locator("#c-axial").hover()
    expect(frame.locator("#readout")).to_contain_text(" HU", timeout=5_000)
    frame.locator("#win").select_option("bone")  # a preset fills in the numbers and redraws, with no request
    expect(frame.locator("#wl-c")).to_have_value("400")
    frame.locator("#win").select_option("soft tissue")
    frame.locator("#unc").check()
    expect(frame.locator("#legend")).to_be_visible()
    frame.locator("#c-axial").hover()  # the picture shows a readout and the legend
    expect(frame.locator("#readout")).to_contain_text("predicted std")
    page.screenshot(path=str(ARTIFACTS / "webapp.png"), full_page=True)

    hrefs = [a.get_attribute("href") for a in downloads.locator("a").all()]
    href = next(h for h in hrefs if h.endswith("/ct.nii.gz"))
    body = page.request.get(href if href.startswith("http") else server.rstrip("/") + href).body()
    assert body[:2] == b"\x1f\x8b"  # the NIfTI volume, gzip
    assert elapsed < 30, f"reconstruction took {elapsed:.1f} s in the browser"

    # now two bad uploads: both problems named, in the page, for good; the old result is gone
    junk = tmp_path / "notes_pa.png"
    junk.write_text("this is not an image")
    flat = tmp_path / "flat_lat.npy"
    np.save(flat, np.full((64, 64), 7.0))
    _upload(page, junk, flat)
    page.click("#reconstruct")
    status = page.locator("#status")
    expect(status).to_contain_text("notes_pa.png", timeout=30_000)
    expect(status).to_contain_text("flat_lat.npy")
    expect(page.locator("#viewer iframe")).to_have_count(0)
    expect(downloads.locator("a")).to_have_count(0)
    page.wait_for_timeout(17_000)  # Gradio's error toasts vanish after ~16 s; the message area does not
    expect(status).to_contain_text("notes_pa.png")
    expect(status).to_contain_text("constant")
    page.screenshot(path=str(ARTIFACTS / "webapp_bad_input.png"), full_page=True)


def test_report_renders_offline(page, tmp_path):
    """The HTML report's own viewer draws slices and the mesh with no network, with the patient's
    sides, the HU under the pointer, a numeric window and the uncertainty legend."""
    from playwright.sync_api import expect

    from xray2ct.report import reconstruction_report
    from xray2ct.surface import bone_surface

    hu = np.full((24, 24, 24), -800.0, np.float32)
    hu[6:18, 9:15, 9:15] = 1200.0
    hu[:, 1:3, 1:3] = 600.0  # a column at the front (h small) on the patient's right (w small)
    path = reconstruction_report(tmp_path / "r.html", hu, (2.0,) * 3, {"PA": np.eye(16)}, std_hu=np.where(hu > 1000, 30.0, 60.0),
                                 mesh=bone_surface(hu, (2.0,) * 3))
    page.route("**/*", lambda route: route.abort() if route.request.url.startswith("http") else route.continue_())
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    axial = page.locator("#c-axial")
    lit = {tuple(p) for p in axial.evaluate(LIT_PIXELS)}
    assert len(lit) == 36 + 4  # the 6 x 6 bone square and the 2 x 2 column, bright in soft-tissue window
    assert {(1, 1), (1, 2), (2, 1), (2, 2)} <= lit  # the column: top left of the axial image...
    expect(page.locator("#c-axial ~ .side.top")).to_have_text("A")  # ...which is written anterior
    expect(page.locator("#c-axial ~ .side.left")).to_have_text("R")  # and patient right
    expect(page.locator("#c-sagittal ~ .side.left")).to_have_text("A")
    expect(page.locator("#mesh[data-rendered]")).to_be_attached(timeout=5_000)
    _assert_shaded(page.locator("#mesh").screenshot())

    box = axial.bounding_box()  # 256 px for 24 voxels: the centre of voxel (row 12, col 12)
    page.mouse.move(box["x"] + 12.5 * box["width"] / 24, box["y"] + 12.5 * box["height"] / 24)
    expect(page.locator("#readout")).to_have_text("axial, voxel (12, 12, 12): 1200 HU, predicted std 30 HU")

    page.fill("#wl-c", "1000")  # a typed window: only the bone (1200 HU) is above it, not the 600 HU column
    page.fill("#wl-w", "100")
    assert axial.evaluate(LIT) == 36
    expect(page.locator("#win")).to_have_value("custom")
    page.select_option("#win", "soft tissue")
    expect(page.locator("#wl-w")).to_have_value("400")

    expect(page.locator("#legend")).to_be_hidden()
    page.check("#unc")
    expect(page.locator("#legend")).to_be_visible()
    tinted = "cv => { const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;" \
             " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] !== d[i + 2]; return n; }"
    assert axial.evaluate(tinted) == 24 * 24  # the overlay colours every pixel
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    page.unroute("**/*")
    assert not errors
