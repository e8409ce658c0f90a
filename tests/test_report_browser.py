"""report.html in a real headless browser (Debian's chromium through Playwright): every image
loads, nothing is fetched from the network, and a full-page screenshot is saved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


@pytest.fixture
def chromium() -> str:
    path = _chromium()
    if path is None:
        pytest.skip("no chromium browser installed (apt-get install chromium; .ci/run does it)")
    return path


def test_report_html_renders_offline_with_every_image(
    trained_run: Path, tmp_path: Path, chromium: str
) -> None:
    from playwright.sync_api import sync_playwright

    page_file = trained_run / "report.html"
    failed: list[str] = []
    outside: list[str] = []
    errors: list[str] = []
    shot = tmp_path / "report.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("requestfailed", lambda r: failed.append(f"{r.url[:80]} {r.failure}"))
            page.on("pageerror", lambda e: errors.append(str(e)))

            def only_local(route) -> None:  # the page must need nothing from a network
                url = route.request.url
                if url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    outside.append(url)
                    route.abort()

            page.route("**/*", only_local)
            page.goto(page_file.as_uri(), wait_until="load")
            widths = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
            )
            title = page.title()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert len(widths) == 10, widths
    assert all(complete and width > 0 for _alt, complete, width in widths), widths
    assert not failed and not outside and not errors, (failed, outside, errors)
    assert title == f"l1cnn report: {trained_run.name}"
    assert shot.stat().st_size > 50_000  # a full page of plots, not a blank
    from PIL import Image

    with Image.open(shot) as img:
        assert img.width == 1280 and img.height > 3000
