"""The page at / in a real headless browser (Debian's chromium through chromium-driver, which .ci/run
installs): a GEMM prediction and a device search through the forms show what the API answers, and a
screenshot of each is written under reports/ (CI keeps it as an artifact)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "reports" / "page"
DEVICE = "Tesla T4"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(trained_model_dir: Path) -> Iterator[str]:
    port = _free_port()
    env = {"PERFCOST_MODEL_DIR": str(trained_model_dir), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the service did not become ready in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "install Debian's chromium and chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def wait(browser: webdriver.Chrome, css: str) -> None:
    WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def test_a_gemm_prediction_on_the_page_shows_the_apis_value(server: str, browser: webdriver.Chrome) -> None:
    browser.get(server + "/")
    wait(browser, f"#gemm-devices option[value='{DEVICE}']")
    devices = Select(browser.find_element(By.ID, "gemm-devices"))
    devices.deselect_all()
    devices.select_by_value(DEVICE)
    for name, value in (("m", "2048"), ("n", "1024"), ("k", "512")):
        field = browser.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    browser.find_element(By.ID, "gemm-submit").click()
    wait(browser, "#gemm-chart svg rect")
    wait(browser, "#roofline-point")
    shown = float(browser.find_element(By.CSS_SELECTOR, "#gemm-chart svg rect").get_attribute("data-value"))
    instance = {
        "m": 2048,
        "n": 1024,
        "k": 512,
        "batch": 1,
        "op": "gemm",
        "dtype": "float32",
        "device": DEVICE,
    }
    api = httpx.post(server + "/v1/gemm/predict", json={"instances": [instance], "coverage": 0.9}).json()
    assert shown == pytest.approx(api["predictions"][0]["runtime_ms"]["value"], rel=1e-12)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "gemm.png"))


def test_the_device_search_on_the_page_ranks_as_the_api_does(server: str, browser: webdriver.Chrome) -> None:
    browser.get(server + "/")
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab='search']").click()
    workload = browser.find_element(By.ID, "search-workload").get_attribute("value")
    browser.find_element(By.ID, "search-submit").click()
    wait(browser, "#search-chart svg rect")
    shown = [
        r.get_attribute("data-label")
        for r in browser.find_elements(By.CSS_SELECTOR, "#search-chart svg rect")
    ]
    api = httpx.post(
        server + "/v1/gemm/search", json={"workload": json.loads(workload or "[]")}, timeout=30
    ).json()
    assert shown == [c["device"] for c in api["ranked"]] and shown
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "search.png"))
