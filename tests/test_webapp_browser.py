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
        page.set_input_files(f"{elem} input[type=file]", str(path))
        # the upload finished (the page shows the name with the suffix apart)
        expect(page.locator(elem)).to_contain_text(path.stem, timeout=30_000)


def test_upload_reconstruct_view_and_download(server, page, tmp_path):
    from playwright.sync_api import expect

    ex = next(e for e in bundled_examples() if e.ct is not None)
    page.goto(server)
    # bad input first: a message in the page, and the app goes on serving
    junk = tmp_path / "notes_pa.png"
    junk.write_text("this is not an image")
    _upload(page, junk, ex.lat)
    page.click("#reconstruct")
    expect(page.get_by_text("notes_pa.png", exact=False).last).to_be_visible(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "webapp_bad_input.png"), full_page=True)

    page.goto(server)
    _upload(page, ex.pa, ex.lat)
    started = time.monotonic()
    page.click("#reconstruct")
    downloads = page.locator("#downloads")
    expect(downloads).to_contain_text("report", timeout=60_000)
    elapsed = time.monotonic() - started
    for plane in ("axial", "coronal", "sagittal"):
        expect(page.locator(f"#view-{plane} img")).to_be_visible(timeout=10_000)
    expect(page.locator("#status")).to_contain_text("PSNR")
    for name in ("ct.nii", "uncertainty_std.nii", "bone_surface", "report"):
        expect(downloads).to_contain_text(name)
    expect(page.locator("#surface canvas")).to_be_visible(timeout=20_000)  # the bone surface's 3D viewer
    page.wait_for_timeout(1500)  # let the viewer draw the mesh before the screenshot
    page.screenshot(path=str(ARTIFACTS / "webapp.png"), full_page=True)

    hrefs = [a.get_attribute("href") for a in downloads.locator("a").all()]
    href = next(h for h in hrefs if h.endswith("/ct.nii.gz"))
    body = page.request.get(href if href.startswith("http") else server.rstrip("/") + href).body()
    assert body[:2] == b"\x1f\x8b"  # the NIfTI volume, gzip
    assert elapsed < 30, f"reconstruction took {elapsed:.1f} s in the browser"

    # the window preset re-renders the views without reconstructing
    before = page.locator("#view-axial img").get_attribute("src")
    page.get_by_label("bone", exact=True).check()
    expect(page.locator("#view-axial img")).not_to_have_attribute("src", before, timeout=10_000)


def test_report_renders_offline(page, tmp_path):
    """The HTML report's own viewer draws slices and the mesh with no network."""
    from xray2ct.report import reconstruction_report
    from xray2ct.surface import bone_surface

    hu = np.full((24, 24, 24), -800.0, np.float32)
    hu[6:18, 9:15, 9:15] = 1200.0
    path = reconstruction_report(tmp_path / "r.html", hu, (2.0,) * 3, {"PA": np.eye(16)}, std_hu=np.abs(hu) / 20,
                                 mesh=bone_surface(hu, (2.0,) * 3))
    page.route("**/*", lambda route: route.abort() if route.request.url.startswith("http") else route.continue_())
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    lit = "cv => { const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;" \
          " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 128; return n; }"
    assert page.locator("#c-axial").evaluate(lit) == 36  # the 6 x 6 bone square, bright in soft-tissue window
    assert page.locator("#mesh").evaluate(lit) > 1000  # the shaded surface
    page.check("#unc")
    tinted = "cv => { const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;" \
             " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] !== d[i + 2]; return n; }"
    assert page.locator("#c-axial").evaluate(tinted) == 24 * 24  # the overlay colours every pixel
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    page.unroute("**/*")
    assert not errors
