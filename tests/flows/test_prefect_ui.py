"""The Prefect UI in a real browser: a short campaign against the Prefect server that
sapis starts, then the flow run's page and its artifacts (the round table, the report
with its plots inlined) in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium; nothing is downloaded).

``SAPIS_UI_SCREENSHOT=docs/prefect-ui.png`` keeps the screenshot of the report there (how
the one in the README was made); by default it goes to the test's temporary folder."""

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import IN_CI, REPO
from test_campaign_flows import write_config

from sapis.campaign.folder import CampaignFolder
from sapis.flows.server import start_server, stop_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1500",
]


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        message = "needs Debian's chromium and chromium-driver (tests/services/install.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path: no Selenium Manager
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def server(tmp_path):
    """The Prefect server (API and UI) that sapis starts, kept after the campaign."""
    process, port = start_server(log=tmp_path / "server.log")
    yield f"http://127.0.0.1:{port}"
    stop_server(process)


DRAWN = "return arguments[0].complete ? arguments[0].naturalWidth : 0"


def _artifacts(url: str) -> dict[str, dict]:
    """The latest artifact of each key, by key."""
    request = urllib.request.Request(
        f"{url}/api/artifacts/filter",
        data=json.dumps({"sort": "CREATED_DESC"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return {a["key"]: a for a in reversed(json.load(response))}


def test_the_ui_shows_a_campaigns_round_table_and_report_with_plots(tmp_path, server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    config = write_config(tmp_path, training={"max_epochs": 5}, stop={"max_rounds": 1})
    env = {**os.environ, "PREFECT_API_URL": f"{server}/api"}
    out = subprocess.run(
        [Path(sys.executable).parent / "sapis", "campaign", str(config)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Prefect UI: {server} (PREFECT_API_URL)" in out.stdout
    last = CampaignFolder(tmp_path / "campaign").records()[-1]
    artifacts = _artifacts(server)
    table, report = artifacts["campaign-rounds"], artifacts["campaign-report"]
    assert table["flow_run_id"] == report["flow_run_id"]  # round 1's flow run
    wait = WebDriverWait(browser, 120)

    # the flow run's page lists both on its Artifacts tab
    browser.get(f"{server}/runs/flow-run/{table['flow_run_id']}")
    wait.until(ready.element_to_be_clickable((By.ID, "artifacts"))).click()
    wait.until(ready.text_to_be_present_in_element((By.TAG_NAME, "body"), "campaign-report"))
    assert "campaign-rounds" in browser.find_element(By.TAG_NAME, "body").text

    # the round table: its header cells and round 1's label count
    browser.get(f"{server}/artifacts/artifact/{table['id']}")
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "table td")))
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "table th")]
    assert headers[:3] == ["round", "labels", "new labels"], headers
    assert "test force MAE (meV/Å)" in headers
    rows = [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in browser.find_elements(By.CSS_SELECTOR, "table tbody tr")
    ]
    assert [r[:2] for r in rows] == [["0", "12"], ["1", str(last.labels)]], rows

    # the report: its tables, and its plots inlined as images the browser could draw
    browser.get(f"{server}/artifacts/artifact/{report['id']}")

    def drawn(driver):  # the PNG plots, once all are decoded: their natural widths
        images = driver.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']")
        widths = [driver.execute_script(DRAWN, image) for image in images]
        return widths if images and all(widths) else False

    widths = wait.until(drawn)
    assert len(widths) >= 3 and min(widths) > 0, widths
    assert "Rounds" in browser.find_element(By.TAG_NAME, "body").text
    shot = Path(os.environ.get("SAPIS_UI_SCREENSHOT") or tmp_path / "prefect-ui.png")
    if not shot.is_absolute():
        shot = REPO / shot
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
