"""The auditor web page, end to end in headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.integration.conftest import Api
from tests.integration.helpers import body

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()

if not HAVE_BROWSER and os.environ.get("CI") == "true":
    pytest.fail("CI requires chromium and chromedriver (make test installs them)", pytrace=False)
pytestmark = pytest.mark.skipif(
    not HAVE_BROWSER, reason="chromium/chromedriver not installed (make test installs them)"
)


def _only_denials(cells: list[object]) -> bool:
    """The filtered table has loaded: at least one row, and every decision is a denial."""
    texts = [getattr(c, "text", "") for c in cells]
    return bool(texts) and all(t == "deny" for t in texts)


def _drive(base: str, token: str, report_id: str, shots: Path) -> dict[str, object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={shots / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(f"{base}/audit/")
        driver.find_element(By.ID, "token").send_keys("abk_not-a-token")
        driver.find_element(By.CSS_SELECTOR, "#signin button").click()
        wait.until(lambda d: "Sign-in failed" in d.find_element(By.ID, "error").text)
        field = driver.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#signin button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events tbody tr")) > 3)
        wait.until(ec.text_to_be_present_in_element((By.ID, "checkpoint-verdict"), "\u2713"))
        rows = len(driver.find_elements(By.CSS_SELECTOR, "#events tbody tr"))
        table_png = driver.find_element(By.ID, "events").screenshot_as_png
        driver.save_screenshot(str(shots / "audit-page.png"))
        decision = driver.find_element(By.CSS_SELECTOR, "#filters select[name=decision]")
        decision.send_keys("deny")
        driver.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
        wait.until(
            lambda d: _only_denials(d.find_elements(By.CSS_SELECTOR, "#events tbody tr td:nth-child(8)"))
        )
        denied_rows = len(driver.find_elements(By.CSS_SELECTOR, "#events tbody tr"))
        driver.find_element(By.CSS_SELECTOR, f"#events td.report[title='{report_id}']").click()
        wait.until(ec.visibility_of_element_located((By.ID, "report-panel")))
        received = driver.find_element(By.CSS_SELECTOR, "table.report-received").text
        refused = driver.find_element(By.CSS_SELECTOR, "table.report-refused").text
        return {
            "rows": rows,
            "denied_rows": denied_rows,
            "table_png": table_png,
            "received": received,
            "refused": refused,
            "verdict": driver.find_element(By.ID, "checkpoint-verdict").text,
        }
    finally:
        driver.quit()


async def test_auditor_page_in_headless_chromium(api: Api, tmp_path: Path) -> None:
    usa, swe, nga = (
        await api.node("usa-1", "USA"),
        await api.node("swe-1", "SWE"),
        await api.node("nga-1", "NGA"),
    )
    auditor = await api.node("aud", "BEL", roles=("audit",))
    _, receipt = await api.publish(usa, body())
    await api.get(f"/v1/reports/{receipt['id']}", swe)
    await api.get(f"/v1/reports/{receipt['id']}", nga)
    result = await asyncio.to_thread(_drive, api.base_url, auditor, receipt["id"], tmp_path)
    assert result["rows"] >= 5
    assert 0 < int(str(result["denied_rows"])) < int(str(result["rows"]))
    assert "swe-1" in str(result["received"]) and "SWE" in str(result["received"])
    assert "nga-1" in str(result["refused"]) and "not_releasable" in str(result["refused"])
    assert "verified" in str(result["verdict"])
    image = Image.open(io.BytesIO(bytes(result["table_png"]))).convert("L")  # type: ignore[arg-type]
    assert image.width > 600 and image.height > 60
    dark = sum(image.histogram()[:128])  # pixels darker than mid-grey: text and rules
    assert dark > 500, "the events table rendered no text"
