"""Helpers for the browser tests (pytest -m browser): open an HTML file in headless Chromium
through selenium and check that it really renders, or skip when no browser is installed here
(a failure instead under MCTQ_REQUIRE_BROWSER=1, as in CI).

Only Debian's chromium and chromium-driver are used (scripts/install-browser.sh installs them):
the driver's path is always given to selenium, so it never tries to download one."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import needs

from mctq_job.report_html import PLOT_HEADINGS, TITLE

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
PAGE_LOAD_SECONDS = 60
#: Each image as the browser sees it once the page has loaded.
IMAGES_SCRIPT = (
    "return Array.from(document.images).map(i => "
    "({src: i.src.slice(0, 30), alt: i.alt, complete: i.complete, width: i.naturalWidth}));"
)
HEADINGS_SCRIPT = "return Array.from(document.querySelectorAll('h1, h2')).map(h => h.textContent.trim());"
#: Everything the page fetched; a self-contained page fetches nothing but itself.
RESOURCES_SCRIPT = "return performance.getEntriesByType('resource').map(r => r.name);"


def unavailable(reason: str) -> NoReturn:
    needs.unavailable("browser", reason, "scripts/install-browser.sh installs Chromium and ChromeDriver (as root)")


def chrome(user_data_dir: str) -> Any:
    """A headless Chromium driven through Debian's chromedriver."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            unavailable(f"{path} is missing")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        unavailable(f"selenium is not installed ({exc}); run `make venv`")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
    return driver


def assert_renders_in_browser(
    path: Path, headings: Iterable[str] = PLOT_HEADINGS, min_images: int = 1
) -> dict[str, Any]:
    """Open ``path`` (a report.html) in headless Chromium and assert that it renders: the report's
    title, its h1 and ``headings`` among the h2s, at least ``min_images`` images, every one loaded
    with a real size, and nothing fetched from anywhere. Returns what the browser saw."""
    with tempfile.TemporaryDirectory(prefix="mctq-chromium-") as profile:
        driver = chrome(profile)
        try:
            driver.get(Path(path).resolve().as_uri())
            seen = {
                "title": driver.title,
                "headings": driver.execute_script(HEADINGS_SCRIPT),
                "images": driver.execute_script(IMAGES_SCRIPT),
                "resources": driver.execute_script(RESOURCES_SCRIPT),
            }
        finally:
            driver.quit()
    assert seen["title"] == TITLE, seen["title"]
    assert seen["headings"][:1] == [TITLE], seen["headings"]
    missing = [heading for heading in headings if heading not in seen["headings"]]
    assert not missing, f"headings missing: {missing}; the page has {seen['headings']}"
    assert len(seen["images"]) >= min_images, seen["images"]
    broken = [image for image in seen["images"] if not image["complete"] or image["width"] <= 0]
    assert not broken, f"images that did not load: {broken}"
    assert seen["resources"] == [], f"the page fetched {seen['resources']}"
    return seen
