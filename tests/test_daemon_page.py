"""The daemon's web page at /, in a real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import SECRET, ThreadedFaultServer, asyncdl_daemon

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("ASYNCDL_CHROMIUM", "/usr/bin/chromium")
# Where the test leaves its screenshot, for a person to look at (default: the test's tmp_path).
SCREENSHOT_DIR = os.environ.get("ASYNCDL_SCREENSHOT_DIR")

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def files() -> Iterator[ThreadedFaultServer]:
    with ThreadedFaultServer() as server:
        yield server


@pytest.fixture
def browser() -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def test_the_page_adds_watches_pauses_and_resumes(
    files: ThreadedFaultServer, browser: object, tmp_path: Path
) -> None:
    small = os.urandom(200_000)
    files.route("/small.iso", body=small)
    slow = os.urandom(3 * 1024 * 1024)
    files.route("/slow.iso", body=slow, rate=400_000)  # about 8 s: time to pause and resume it
    root = tmp_path / "root"
    with asyncdl_daemon(root, "--limit-rate", "8M") as daemon:
        page = browser.new_page(viewport={"width": 1100, "height": 560})  # type: ignore[attr-defined]
        seen_errors: list[str] = []
        page.on("pageerror", lambda error: seen_errors.append(str(error)))
        # Console errors include what the page's Content-Security-Policy blocked (nothing may be).
        page.on("console", lambda msg: seen_errors.append(msg.text) if msg.type == "error" else None)
        sockets: list[str] = []
        page.on("websocket", lambda socket: sockets.append(socket.url))
        page.goto(f"http://127.0.0.1:{daemon.port}/")
        expect = playwright_api.expect

        # A wrong secret is refused; the right one shows the queue.
        page.fill("#secret", "not-the-secret")
        page.click("#connect")
        expect(page.locator("#login-error")).to_contain_text("refused")
        page.fill("#secret", SECRET)
        page.click("#connect")
        expect(page.locator("#queue-view")).to_be_visible()

        # Type a URL, add it, watch the bar reach 100% and the file appear.
        page.fill("#urls", files.url("/small.iso"))
        page.click("#add")
        row = page.locator("#queue tbody tr", has_text="small.iso")
        expect(row).to_have_attribute("data-status", "complete", timeout=30_000)
        expect(row.locator(".bar")).to_have_attribute("aria-valuenow", "100")
        expect(row.locator(".pct")).to_have_text("100%")
        assert (root / "small.iso").read_bytes() == small

        # A slow one: pause it while it runs, see it paused, resume it, see it complete.
        page.fill("#urls", files.url("/slow.iso"))
        page.click("#add")
        slow_row = page.locator("#queue tbody tr", has_text="slow.iso")
        expect(slow_row).to_have_attribute("data-status", "active", timeout=30_000)
        expect(slow_row.locator(".speed")).to_contain_text("/s")
        expect(slow_row.locator(".bar")).not_to_have_attribute("aria-valuenow", "0", timeout=30_000)
        slow_row.locator("button.pause").click()
        expect(slow_row).to_have_attribute("data-status", "paused", timeout=30_000)
        paused_at = int(slow_row.locator(".bar").get_attribute("aria-valuenow") or "0")
        assert 0 < paused_at < 100
        assert not (root / "slow.iso").exists()
        slow_row.locator("button.resume").click()
        expect(slow_row).to_have_attribute("data-status", "active", timeout=30_000)
        expect(slow_row.locator(".bar")).not_to_have_attribute(
            "aria-valuenow", str(paused_at), timeout=30_000
        )
        # A screenshot of the queue while one download runs, for a person to look at.
        shots = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
        page.screenshot(path=str(shots / "daemon-page.png"), full_page=True)
        expect(slow_row).to_have_attribute("data-status", "complete", timeout=60_000)
        expect(slow_row.locator(".pct")).to_have_text("100%")
        assert (root / "slow.iso").read_bytes() == slow
        # The resume continued from the bytes on disk.
        assert any((r.header("Range") or "").startswith("bytes=") for r in files.requests_for("/slow.iso"))

        # Remove clears a finished row.
        row.locator("button.remove").click()
        expect(row).to_have_count(0)
        # The wrong secret was answered 400 (the browser logs that); nothing else went wrong.
        assert [e for e in seen_errors if "400" not in e] == []
        assert sockets == [f"ws://127.0.0.1:{daemon.port}/jsonrpc"]  # live updates: notifications
        page.close()
