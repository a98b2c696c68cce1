"""The labelling page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium; no browser download): label three images by keyboard, undo one, and check the store."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.services.settings import FeedbackSettings
from tests.services.helpers import demo_tasks, live_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ADMIN, LAB = "admin-token-page", "labeller-token-page"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's browser: `apt-get install -y chromium chromium-driver` (.ci/run does this)",
)


@pytest.fixture
def driver() -> Iterator:
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="t2i-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1000,900",
    ):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_label_three_images_by_keyboard(driver, tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tasks = demo_tasks(3, seed=21)
    settings = FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN, labeller_tokens=[LAB])
    with live_server(settings) as url, FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(tasks)
        driver.get(f"{url}/?token={LAB}&labeller=alice")
        wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))  # #image is swapped
        body = driver.find_element(By.TAG_NAME, "body")

        def shown(sample_id: str) -> None:
            """Wait until the page shows this task with its image loaded, ready for a key."""

            def ready(d) -> bool:
                img = d.find_element(By.ID, "image")
                return (
                    img.get_attribute("data-sample-id") == sample_id
                    and d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                    and body.get_attribute("data-state") == "ready"
                )

            wait.until(ready)
            expected = next(t["prompt"] for t in tasks if t["sample_id"] == sample_id)
            assert driver.find_element(By.ID, "prompt").text == expected

        ids = [t["sample_id"] for t in tasks]
        shown(ids[0])
        assert driver.find_element(By.ID, "remaining").text == "3"
        body.send_keys("g")
        shown(ids[1])
        body.send_keys("2")  # bad, by number key
        shown(ids[2])
        assert driver.find_element(By.ID, "done").text == "2"
        body.send_keys("u")  # undo the "bad": the second image comes back
        shown(ids[1])
        assert driver.find_element(By.ID, "done").text == "1"
        body.send_keys("s")
        shown(ids[2])
        body.send_keys("b")
        # all done on screen, and every label acknowledged (the page shows the next image before
        # the service has answered for the last one)
        wait.until(lambda d: body.get_attribute("data-state") == "idle" and body.get_attribute("data-outbox") == "0")
        assert "All done" in driver.find_element(By.ID, "prompt").text
        assert driver.find_element(By.ID, "done").text == "3"
        assert driver.find_element(By.ID, "remaining").text == "0"

        rows, _ = admin.export_labels()
        assert [(r["sample_id"], r["label"], r["labeller"]) for r in rows] == [
            (ids[0], "good", "alice"),
            (ids[1], "skip", "alice"),
            (ids[2], "bad", "alice"),
        ]
        assert all(r["time_spent_ms"] is not None and r["time_spent_ms"] >= 0 for r in rows)
        assert admin.stats()["rounds"][0]["skipped"] == 1
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
