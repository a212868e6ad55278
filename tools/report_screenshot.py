"""The README's picture of the HTML report (maintainer tool; needs Chromium and playwright).

    .venv/bin/python tools/report_screenshot.py docs/images/report.png

Reconstructs the first bundled example with the bundled weights into a report
(`xray2ct reconstruct --report`), opens it offline in headless Chromium, sets the bone
window and the uncertainty overlay, points at the axial slice (so the HU readout shows)
and saves a full-page screenshot. The web app's picture is the browser test's
`test-artifacts/webapp.png`.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from xray2ct.engine.demo import bundled_examples
from xray2ct.engine.reconstruct import reconstruct

CHROMIUM = os.environ.get("XRAY2CT_CHROMIUM", "/usr/bin/chromium")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="PNG to write")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    ex = next(e for e in bundled_examples() if e.ct is not None)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.html"
        reconstruct(ex.pa, ex.lat, Path(tmp) / "ct.nii.gz", device="cpu", report=report)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.route("**/*", lambda r: r.abort() if r.request.url.startswith("http") else r.continue_())
            page.goto(report.as_uri())
            page.select_option("#win", "bone")
            page.check("#unc")
            page.wait_for_selector("#mesh[data-rendered]")
            box = page.locator("#c-axial").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.8)  # the spine
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
