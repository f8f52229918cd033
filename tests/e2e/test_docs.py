"""/docs in a real headless Chromium against the real server: every route renders, and
"Try it out" on GET /health shows the server's answer.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser`` installs them; ``make
test`` runs it first).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.conftest import Server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1280,2000"]
WAIT_S = 60


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: run `make browser` (apt-get install "
                    "chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="infermcp-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in [*ARGS, f"--user-data-dir={profile}"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_S)


def test_every_route_renders(browser: WebDriver, server: Server) -> None:
    spec = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    browser.get(f"{server.base_url}/docs")
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
    rendered = {(e.get_attribute("data-path"), e.find_element(
                 By.XPATH, "ancestor::div[contains(@class,'opblock ')]").get_attribute("class"))
                for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    paths = {path for path, _ in rendered}
    assert paths == set(spec["paths"])
    for path, ops in spec["paths"].items():
        for method in ops:
            assert any(p == path and f"opblock-{method}" in (c or "") for p, c in rendered)


def try_it_out(browser: WebDriver, server: Server, operation: str) -> tuple[str, str, str]:
    """Open /docs, expand ``operation`` (``operations-{tag}-{operationId}``), press "Try it
    out" then "Execute" with the offered example; (status, response body, request URL)."""
    browser.get(f"{server.base_url}/docs")
    block = wait(browser).until(ec.presence_of_element_located((By.ID, operation)))
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait(browser).until(lambda d: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    wait(browser).until(lambda d: block.find_elements(By.CSS_SELECTOR, ".execute"))
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    live = ".live-responses-table tr.response"
    status = wait(browser).until(lambda d: block.find_element(
        By.CSS_SELECTOR, f"{live} .response-col_status"))
    body = wait(browser).until(lambda d: block.find_element(
        By.CSS_SELECTOR, f"{live} .response-col_description .highlight-code"))
    url = block.find_element(By.CSS_SELECTOR, ".request-url pre").text
    return status.text.strip(), body.get_attribute("textContent") or "", url


def test_try_it_out_on_health_shows_the_answer(browser: WebDriver, server: Server,
                                               tmp_path: Path) -> None:
    status, body, url = try_it_out(browser, server, "operations-Server-health")
    browser.save_screenshot(str(tmp_path / "docs.png"))
    assert status == "200"
    assert '"status": "ok"' in body and server.model_id in body
    assert url == f"{server.base_url}/health"  # the same origin, this server


def test_try_it_out_posts_the_example_body(browser: WebDriver, server: Server) -> None:
    status, body, url = try_it_out(browser, server, "operations-Tokens-tokenize")
    assert (status, url) == ("200", f"{server.base_url}/tokenize")
    assert '"count":' in body and f'"model": "{server.model_id}"' in body
