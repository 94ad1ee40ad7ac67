"""A real headless Chromium (Debian's `chromium` and `chromium-driver`) driven by Selenium.

`chromium_or_skip()` skips the test where the browser or its driver is missing (a failure with
`GPUSCRIBE_TEST_REQUIRE_SERVICES=1`, as in CI, whose `.ci/run` installs both). Selenium is given
the driver's path, so it never looks for (or downloads) a browser or driver of its own.
"""

from __future__ import annotations

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


def wait_for(driver: Any, condition: Callable[[Any], T], timeout: float = 30.0) -> T:
    """Poll `condition(driver)` until it is truthy; its value. TimeoutException otherwise."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)  # type: ignore[no-any-return]


def screenshot(driver: Any, path: Path, *, width: int, full_page: bool = True) -> None:
    """A PNG of the page; `full_page` resizes the window to the page's height first."""
    height = 900
    if full_page:
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, height)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
