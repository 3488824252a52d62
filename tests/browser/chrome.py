"""Headless Chromium for the page tests (Debian's `chromium` and `chromium-driver`).

Missing, it skips the test on a laptop and fails it under CI (`bash tests/run` installs it).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_chromium() -> tuple[str, str]:
    """The paths of chromium and chromedriver."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        driver = None
    if browser and driver:
        return browser, driver
    message = (
        "headless Chromium is not installed (Debian: apt-get install chromium chromium-driver; "
        "bash tests/run installs it) or selenium is missing"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def start(width: int = 1360, height: int = 1000) -> Any:
    """A headless Chromium session driven over WebDriver, with console logs kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    # An alert must stay open for the test to see it, not be dismissed by the driver.
    options.unhandled_prompt_behavior = "ignore"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))
