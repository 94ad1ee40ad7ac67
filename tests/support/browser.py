"""A real headless Chromium (Debian's `chromium` and `chromium-driver`) driven by Selenium.

`chromium_or_skip()` skips the test where the browser or its driver is missing (a failure with
`GPUSCRIBE_TEST_REQUIRE_SERVICES=1`, as in CI, whose `.ci/run` installs both). Selenium is given
the driver's path, so it never looks for (or downloads) a browser or driver of its own.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from support.services import require_service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
)  # fmt: skip
INSTALL_HINT = "apt-get install chromium chromium-driver"

T = TypeVar("T")


def chromium_or_skip() -> None:
    """Return if Chromium, its driver and Selenium are here; else skip (fail in CI)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        require_service(Path(path).exists(), f"no {path}: {INSTALL_HINT}")
    try:
        import selenium  # noqa: F401
    except ImportError:
        require_service(False, "the selenium package is missing: pip install -e '.[dev]'")


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium window of `width` x `height` CSS pixels, in a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gpuscribe-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, condition: Callable[[Any], T], what: str, timeout: float = 30.0) -> T:
    """Poll `condition(driver)` until it is truthy; its value. AssertionError naming `what`,
    with the page's text and the browser's console, otherwise."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        value: T = WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException:
        text = driver.find_element("tag name", "body").text
        console = driver.get_log("browser")
        raise AssertionError(
            f"{what}: not shown within {timeout:.0f} s; console {console}; page:\n{text[:3000]}"
        ) from None
    return value


def screenshot(
    driver: Any,
    path: Path,
    *,
    width: int,
    scale: float = 1.0,
    ready: Callable[[Any], object] | None = None,
) -> None:
    """A PNG of the whole page (not only what fits the window) as a screen `width` CSS pixels
    wide shows it (narrower than 600: a phone's), at `scale` device pixels per CSS pixel.
    `ready(driver)` says when the page has laid itself out again at that width."""
    metrics = {"width": width, "height": 900, "deviceScaleFactor": scale, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        if ready is not None:
            wait_for(driver, ready, f"the page at {width} px")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
