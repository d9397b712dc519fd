"""Headless Chromium for the tests of web pages (the HTML catalogue, the hub's status
page), driven through Debian's chromedriver: `make browser` installs both."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

INSTALL = (
    "the browser tests need Debian's chromium and chromium-driver: "
    "run `make browser` (apt-get install -y chromium chromium-driver)"
)


@contextmanager
def chromium(size: str) -> Iterator[Any]:
    """One headless Chromium with a window of ``size`` ("1100,800"), quit at the end;
    the test fails, saying what to install, without one."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail(INSTALL)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={size}")
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()
