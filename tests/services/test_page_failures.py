"""The labelling page's failure cases in a real headless Chromium against a real server: an image
that does not load, keys pressed while labels are being saved or while no image is on screen,
the "all done" screen waiting for the next round, and reviewing / undoing the last labels with a
labeller's own token. Requests are held in flight for real: the test takes SQLite's write lock,
so the service's writes (labels, leases) wait, exactly as on a slow disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.services.schemas import PNG_MAGIC
from t2i_rlhf.services.settings import FeedbackSettings
from tests.services.helpers import demo_tasks, live_server
from tests.services.test_page import CHROMEDRIVER, CHROMIUM, driver  # noqa: F401  (the fixture)

ADMIN, SHARED = "admin-token-pagefail", "shared-token-pagefail"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()), reason="needs Debian's chromium"
)


class Page:
    """Waits on what a person sees: the state, the sample on screen, the status line."""

    def __init__(self, drv: Any) -> None:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.by = drv, By
        self.wait = WebDriverWait(drv, 20, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))

    def js(self, script: str) -> Any:
        return self.d.execute_script(script)

    def text(self, id_: str) -> str:
        return self.d.find_element(self.by.ID, id_).text

    def state(self) -> str:
        return self.js("return document.body.dataset.state || ''")

    def until(self, cond, what: str) -> None:
        self.wait.until(lambda _: cond(), message=what)

    def shown(self, sample_id: str, state: str = "ready") -> None:
        """This sample on screen, in this state (ready: its image decoded and drawn)."""
        probe = (
            "const i = document.getElementById('image');"
            "return [i.dataset.sampleId, document.body.dataset.state, i.complete && i.naturalWidth > 0 && !i.hidden]"
        )

        def ok() -> bool:
            sid, st, drawn = self.js(probe)
            return sid == sample_id and st == state and (drawn or state != "ready")

        self.until(ok, f"{sample_id} {state}; saw {self.js(probe)}")

    def key(self, keys: str) -> None:
        self.d.find_element(self.by.TAG_NAME, "body").send_keys(keys)

    def dataset(self, name: str) -> str:
        return self.js(f"return document.body.dataset.{name} || '0'")

    def recent(self) -> list[tuple[str, str, str]]:
        return [
            (
                li.get_attribute("data-sample-id"),
                li.find_element(self.by.CSS_SELECTOR, ".lab").text,
                li.get_attribute("data-state"),
            )
            for li in self.d.find_elements(self.by.CSS_SELECTOR, "#recent-list li")
        ]

    def no_broken_image(self) -> bool:
        return self.js("const i = document.getElementById('image'); return i.hidden && !i.getAttribute('src')")


def _labels(admin: FeedbackClient) -> list[tuple[str, str]]:
    return [(r["sample_id"], r["label"]) for r in admin.export_labels()[0]]


def _settings(tmp_path: Path) -> FeedbackSettings:
    return FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN, shared_labeller_tokens=[SHARED])


def test_an_image_that_fails_to_load_is_said_and_can_be_skipped(driver, tmp_path: Path) -> None:  # noqa: F811
    tasks = demo_tasks(3, seed=51)
    tasks[1]["image"] = PNG_MAGIC + b"the service takes it, no browser can draw it"
    ids = [t["sample_id"] for t in tasks]
    with live_server(_settings(tmp_path)) as url, FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(tasks)
        driver.execute_cdp_cmd("Network.enable", {})  # the third image's request fails in the browser
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": [f"*/{quote(ids[2], safe='')}/image"]})
        driver.get(f"{url}/?token={SHARED}&labeller=ann")
        page = Page(driver)
        page.shown(ids[0])
        page.key("g")
        page.shown(ids[1], "failed")  # undecodable: said plainly, no broken image, no live good/bad buttons
        assert "could not be loaded" in page.text("image-error") and "skip" in page.text("image-error").lower()
        assert page.no_broken_image() and page.text("prompt") == tasks[1]["prompt"]
        buttons = page.js("return [good.disabled, bad.disabled, skip.disabled, retry.hidden]")
        assert buttons == [True, True, False, False]
        page.key("g")  # refused, and said so: it must not label a picture nobody saw
        assert page.dataset("refused") == "1" and "key ignored" in page.text("status")
        page.key("s")
        page.shown(ids[2], "failed")  # the request itself failed
        assert "could not be loaded" in page.text("image-error")
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        page.key("r")  # retry: now it loads
        page.shown(ids[2])
        page.key("b")
        page.until(lambda: page.state() == "idle" and page.dataset("outbox") == "0", "all saved, all done")
        assert _labels(admin) == [(ids[0], "good"), (ids[1], "skip"), (ids[2], "bad")]


def test_keys_while_saving_are_kept_and_keys_with_no_image_are_refused(driver, tmp_path: Path) -> None:  # noqa: F811
    tasks = demo_tasks(4, seed=52)
    ids = [t["sample_id"] for t in tasks]
    with live_server(_settings(tmp_path)) as url, FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(tasks[:3])
        driver.get(f"{url}/?token={SHARED}&labeller=ann&poll=0.5")
        page = Page(driver)
        page.shown(ids[0])
        page.js("window.notReloaded = true")
        lock = sqlite3.connect(tmp_path / "fb.db", isolation_level=None, timeout=10)
        lock.execute("BEGIN IMMEDIATE")  # from now on every write of the service waits: requests stay in flight
        try:
            page.key("g")
            page.shown(ids[1])  # the next image is there at once; the label is still on its way
            page.key("b")
            page.shown(ids[2])
            page.key("s")
            # nothing left in the queue and the lease request is stuck: no image on screen
            page.until(lambda: page.state() == "loading", "loading")
            assert page.no_broken_image()
            page.key("g")
            assert page.dataset("refused") == "1" and "key ignored" in page.text("status")
            assert page.dataset("outbox") == "3" and _labels(admin) == []  # nothing acknowledged yet
            assert page.recent() == [(ids[2], "skip", "saving"), (ids[1], "bad", "saving"), (ids[0], "good", "saving")]
            assert page.text("session") == "3" and "saving 3" in page.text("pending")  # said, not hidden
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        page.until(lambda: page.state() == "idle" and page.dataset("outbox") == "0", "all saved, all done")
        assert _labels(admin) == [(ids[0], "good"), (ids[1], "bad"), (ids[2], "skip")]  # in order; no stray "g"
        assert [s for _, _, s in page.recent()] == ["saved"] * 3 and page.text("pending") == ""
        assert "All done" in page.text("prompt") and page.no_broken_image()
        admin.publish_tasks(tasks[3:])  # the next round: the page finds it by itself
        page.shown(ids[3])
        assert page.js("return window.notReloaded === true")
        page.key("g")
        page.until(lambda: page.state() == "idle" and page.dataset("outbox") == "0", "saved")
        assert _labels(admin)[-1] == (ids[3], "good")


def test_name_session_count_and_undo_from_the_recent_list(driver, tmp_path: Path) -> None:  # noqa: F811
    tasks = demo_tasks(4, seed=53)
    ids = [t["sample_id"] for t in tasks]
    with live_server(_settings(tmp_path)) as url, FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(tasks)
        token = admin.create_labeller("alice")["token"]
        driver.get(f"{url}/?token={token}&labeller=mallory")  # an account's token: the typed name does not count
        page = Page(driver)
        page.shown(ids[0])
        assert page.text("who") == "alice" and "belongs to alice" in page.text("status")
        assert (page.text("session"), page.text("done"), page.text("remaining")) == ("0", "0", "4")
        for sid, key in zip(ids[1:], "gbg", strict=False):
            page.key(key)
            page.shown(sid)
        page.until(lambda: page.dataset("outbox") == "0", "saved")
        assert page.recent() == [(ids[2], "good", "saved"), (ids[1], "bad", "saved"), (ids[0], "good", "saved")]
        assert page.text("session") == "3"
        # undo the middle one from the list: it comes back on screen, the one on screen waits
        page.d.find_elements(page.by.CSS_SELECTOR, "#recent-list li .undo-one")[1].click()
        page.shown(ids[1])
        page.until(lambda: page.dataset("outbox") == "0", "undone")
        assert page.recent()[1] == (ids[1], "bad", "undone") and page.text("session") == "2"
        assert _labels(admin) == [(ids[0], "good"), (ids[2], "good")]
        page.key("s")
        page.shown(ids[3])
        page.key("u")  # undo the last: the skip
        page.shown(ids[1])
        page.key("b")
        page.shown(ids[3])
        page.until(lambda: page.dataset("outbox") == "0", "saved")
        assert page.text("session") == "3"
        rows = admin.export_labels()[0]
        assert [(r["sample_id"], r["label"], r["labeller"], r["via"]) for r in rows] == [
            (ids[0], "good", "alice", "labeller_token"),
            (ids[2], "good", "alice", "labeller_token"),
            (ids[1], "bad", "alice", "labeller_token"),
        ]
        driver.refresh()  # a new session: its count starts again, the total is the service's
        page.shown(ids[3])
        assert (page.text("session"), page.text("done"), page.text("who")) == ("0", "3", "alice")
