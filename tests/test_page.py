"""The upload page and /docs in a real browser (the system's Chromium, driven by Playwright)
against a real server process: uploads, errors, accessibility hooks, and no outside requests.

Set UPDATE_SCREENSHOT=1 to write docs/upload-page.png, the README's screenshot.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import MEGA_OUT_OF_REACH, ROOT, ServerProcess, held_upload_slot, tokens_toml
from tests.support.cutting_proxy import CuttingProxy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 30_000
MiB = 1024 * 1024
SCREENSHOT = ROOT / "docs" / "upload-page.png"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI needs Chromium for the page tests: .ci/run installs it")
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import (  # noqa: E402
    Browser,
    Page,
    Request,
    expect,
    sync_playwright,
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True
        )
        yield browser
        browser.close()


class Visit:
    """A fresh browser page that records every request it makes and every console error."""

    def __init__(self, browser: Browser, server: ServerProcess, **context: object) -> None:
        self.server = server
        self.context = browser.new_context(accept_downloads=True, **context)
        self.page: Page = self.context.new_page()
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("request", self._record)
        self.page.on(
            "console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None
        )
        self.page.set_default_timeout(WAIT_MS)

    def _record(self, request: Request) -> None:
        self.requests.append(request.url)

    def outside_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(self.server.url + "/")]

    def open(self, path: str = "/") -> Page:
        self.page.goto(self.server.url + path)
        return self.page

    def upload_requests(self) -> list[str]:
        """The uploads the page started: a form POST, or a tus creation (its pieces, the
        PATCHes to the upload's own URL, are not counted)."""
        return [url for url in self.requests if urlsplit(url).path in {"/upload", "/tus", "/tus/"}]


@pytest.fixture
def visit(browser: Browser) -> Iterator:
    visits: list[Visit] = []

    def make(server: ServerProcess, **context: object) -> Visit:
        visit = Visit(browser, server, **context)
        visits.append(visit)
        return visit

    yield make
    for visit in visits:
        visit.context.close()


def start(live_server, **env: str) -> ServerProcess:
    return live_server([sys.executable, "server.py"], **env)


def choose_files(page: Page, token: str, files: list[Path]) -> None:
    page.get_by_label("Token or ticket").fill(token)
    page.get_by_label("Files").set_input_files([str(path) for path in files])


def upload_files(page: Page, token: str, files: list[Path]) -> None:
    choose_files(page, token, files)
    page.get_by_role("button", name="Upload", exact=True).click()


def test_files_uploaded_through_the_page_link_to_the_same_bytes(
    live_server, visit, tmp_path: Path
) -> None:
    server = start(live_server)
    first, second = tmp_path / "holiday photo.jpg", tmp_path / "notes.txt"
    first.write_bytes(os.urandom(300_000))
    second.write_bytes(b"second file\n" * 1000)
    os.utime(first, (1_234_567_890, 1_234_567_890))  # the photo's own date goes with it
    browser_visit = visit(server)
    page = browser_visit.open()

    upload_files(page, server.env["AUTH_TOKEN"], [first, second])

    links = page.get_by_role("textbox", name="Link to")
    links.nth(1).wait_for()
    for index, path in enumerate([first, second]):
        row = page.locator("li.file").nth(index)
        assert path.name in row.inner_text()
        assert row.locator("progress").evaluate("bar => bar.value") == 100
        link = links.nth(index).input_value()
        assert link.startswith(server.url + "/files/")
        served = httpx.get(link, timeout=10)
        assert served.content == path.read_bytes()
        if path == first:
            assert served.headers["last-modified"] == "Fri, 13 Feb 2009 23:31:30 GMT"
    # Screen readers hear the result and can name every control; nothing came from outside.
    expect(page.locator("#announce")).to_contain_text("uploaded")
    unnamed = page.locator("input, button, select, progress").evaluate_all(
        """controls => controls.filter(c => !(c.labels && c.labels.length)
            && !c.getAttribute('aria-label') && !c.textContent.trim()).map(c => c.outerHTML)"""
    )
    assert unnamed == []
    assert browser_visit.outside_requests() == []
    assert browser_visit.console_errors == []
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.set_viewport_size({"width": 720, "height": 560})
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_an_upload_ticket_is_pasted_like_a_token(live_server, visit, tmp_path: Path) -> None:
    portal_token = secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml(portal={"secret": portal_token, "can_issue_tickets": True}))
    server = start(live_server, TOKENS_FILE=str(tokens), TICKET_SECRET=secrets.token_urlsafe(32))
    issued = httpx.post(
        f"{server.url}/tickets",
        headers={"X-Auth-Token": portal_token},
        json={"expires_in": 600, "max_uses": 1},
        timeout=10,
    )
    assert issued.status_code == 200, issued.text
    path = tmp_path / "from-a-ticket.txt"
    path.write_text("ticketed")
    page = visit(server).open()
    expect(page.locator("#token-help")).to_contain_text("upload ticket")

    upload_files(page, issued.json()["ticket"], [path])

    link = page.get_by_role("textbox", name="Link to from-a-ticket.txt")
    assert httpx.get(link.input_value(), timeout=10).text == "ticketed"


def test_copy_button_puts_the_link_on_the_clipboard(live_server, visit, tmp_path: Path) -> None:
    server = start(live_server)
    path = tmp_path / "copied.txt"
    path.write_text("copy me")
    browser_visit = visit(server, permissions=["clipboard-read", "clipboard-write"])
    page = browser_visit.open()
    upload_files(page, server.env["AUTH_TOKEN"], [path])

    page.get_by_role("button", name="Copy link to copied.txt").click()

    page.get_by_role("button", name="Copy link to copied.txt").filter(has_text="Copied").wait_for()
    link = page.get_by_role("textbox", name="Link to copied.txt").input_value()
    assert page.evaluate("navigator.clipboard.readText()") == link


def test_choosing_files_starts_nothing_until_upload_is_pressed(
    live_server, visit, tmp_path: Path
) -> None:
    server = start(live_server)
    path = tmp_path / "chosen.txt"
    path.write_text("sent on Upload")
    browser_visit = visit(server)
    page = browser_visit.open()

    choose_files(page, server.env["AUTH_TOKEN"], [path])

    expect(page.locator("#chosen")).to_have_text("1 file chosen: chosen.txt. Press Upload to send.")
    assert page.locator("li.file").count() == 0 and browser_visit.upload_requests() == []

    page.get_by_role("button", name="Upload", exact=True).click()

    link = page.get_by_role("textbox", name="Link to chosen.txt")
    assert httpx.get(link.input_value(), timeout=10).text == "sent on Upload"
    assert "Choose one or more files first" not in page.locator("#announce").inner_text()
    assert len(browser_visit.upload_requests()) == 1
    expect(page.locator("#chosen")).to_have_text("")


def test_wrong_token_shows_the_services_message(live_server, visit, tmp_path: Path) -> None:
    server = start(live_server)
    path = tmp_path / "refused.txt"
    path.write_text("no")
    page = visit(server).open()

    upload_files(page, "not-the-token-at-all", [path])

    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "the auth token is not valid" in alert.inner_text()
    assert "token or ticket" in alert.inner_text()
    assert not (server.tmp / "files").exists() or not any((server.tmp / "files").rglob("*.txt"))


def test_file_over_the_limit_is_refused_before_sending(live_server, visit, tmp_path: Path) -> None:
    server = start(live_server, MAX_UPLOAD_BYTES="1KiB")
    path = tmp_path / "big.bin"
    path.write_bytes(b"b" * 2048)
    browser_visit = visit(server)
    page = browser_visit.open()
    expect(page.locator("#limit")).to_contain_text("1.0 KiB")

    upload_files(page, server.env["AUTH_TOKEN"], [path])

    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "larger than the limit of 1.0 KiB" in alert.inner_text()
    assert browser_visit.upload_requests() == []


def test_a_tokens_own_limit_is_checked_before_sending(live_server, visit, tmp_path: Path) -> None:
    small = "small-page-token-4c3b2a19"
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml(small={"secret": small, "max_upload_bytes": "1KiB"}))
    server = start(live_server, TOKENS_FILE=str(tokens), MAX_UPLOAD_BYTES="1MiB")
    path = tmp_path / "two-kib.bin"
    path.write_bytes(b"k" * 2048)
    browser_visit = visit(server)
    page = browser_visit.open()
    expect(page.locator("#limit")).to_contain_text("1.0 MiB")  # the service's limit

    upload_files(page, small, [path])

    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "larger than the limit of 1.0 KiB" in alert.inner_text()  # the token's own
    assert browser_visit.upload_requests() == []


def test_busy_service_says_when_to_try_again(live_server, visit, tmp_path: Path) -> None:
    server = start(live_server, MAX_CONCURRENT_UPLOADS="1")
    path = tmp_path / "later.txt"
    path.write_text("later")
    page = visit(server).open()

    with held_upload_slot(server):
        upload_files(page, server.env["AUTH_TOKEN"], [path])
        alert = page.get_by_role("alert")
        alert.wait_for()
        text = alert.inner_text()
    assert "too many uploads in progress" in text
    assert "Try again in 5 s" in text
    # Once the service has room, the same file goes up from the same row.
    page.get_by_role("button", name="Try uploading later.txt again").click()
    link = page.get_by_role("textbox", name="Link to later.txt")
    assert httpx.get(link.input_value(), timeout=10).text == "later"


def test_progress_shows_speed_and_time_left_and_can_be_cancelled(
    live_server, visit, tmp_path: Path
) -> None:
    server = start(live_server)
    path = tmp_path / "slow.bin"
    path.write_bytes(os.urandom(2 * 1024 * 1024))
    browser_visit = visit(server)
    page = browser_visit.open()
    # A slow uplink (256 KiB/s), so that the upload is seen while it runs.
    network = browser_visit.context.new_cdp_session(page)
    network.send("Network.enable")
    slow = {"offline": False, "latency": 0, "downloadThroughput": -1}
    network.send("Network.emulateNetworkConditions", {**slow, "uploadThroughput": 256 * 1024})

    upload_files(page, server.env["AUTH_TOKEN"], [path])

    status = page.locator("li.file .status")
    expect(status).to_have_text(re.compile(r"\d+ %, [\d.]+ [KM]iB/s, \d+ s left"))
    assert 0 < page.locator("li.file progress").evaluate("bar => bar.value") < 100
    page.get_by_role("button", name="Cancel uploading slow.bin").click()
    page.get_by_role("alert").wait_for()
    assert "cancelled" in status.inner_text()

    network.send("Network.emulateNetworkConditions", {**slow, "uploadThroughput": -1})
    page.get_by_role("button", name="Try uploading slow.bin again").click()
    link = page.get_by_role("textbox", name="Link to slow.bin")
    assert httpx.get(link.input_value(), timeout=10).content == path.read_bytes()


def test_token_is_kept_only_when_remember_is_ticked(live_server, visit) -> None:
    server = start(live_server)
    page = visit(server).open()
    token_field = page.get_by_label("Token or ticket")

    token_field.fill("kept-token-1234567890")
    token_field.press("Tab")
    page.reload()
    assert page.get_by_label("Token or ticket").input_value() == ""

    page.get_by_label("Token or ticket").fill("kept-token-1234567890")
    page.get_by_label("Remember on this device").check()
    page.reload()
    assert page.get_by_label("Token or ticket").input_value() == "kept-token-1234567890"

    page.get_by_label("Remember on this device").uncheck()
    page.reload()
    assert page.get_by_label("Token or ticket").input_value() == ""


def test_page_works_with_the_keyboard_on_a_phone_sized_screen(
    live_server, visit, tmp_path: Path
) -> None:
    server = start(live_server)
    path = tmp_path / "phone.txt"
    path.write_text("from a phone")
    page = visit(server, viewport={"width": 360, "height": 640}, is_mobile=True).open()

    # Keyboard order: the token first, then the remember box, then the files.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.type(server.env["AUTH_TOKEN"])
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "remember"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "files"
    page.get_by_label("Files").set_input_files(str(path))
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send"
    page.keyboard.press("Enter")
    page.get_by_role("textbox", name="Link to phone.txt").wait_for()

    # Nothing sticks out sideways on a narrow screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 360


def test_sharex_config_with_the_token_is_made_in_the_browser(live_server, visit) -> None:
    server = start(live_server)
    browser_visit = visit(server)
    page = browser_visit.open()
    page.get_by_label("Token or ticket").fill(server.env["AUTH_TOKEN"])
    page.get_by_text("ShareX and other clients").click()

    with page.expect_download() as download_info:
        page.get_by_role("button", name="ShareX uploader with my token or ticket").click()

    config = json.loads(Path(download_info.value.path()).read_text())
    assert config["Headers"]["X-Auth-Token"] == server.env["AUTH_TOKEN"]
    assert config["RequestURL"] == f"{server.url}/upload"
    # The token stayed in the browser: no request carried it in its URL.
    assert not [url for url in browser_visit.requests if server.env["AUTH_TOKEN"] in url]


def test_sharex_without_a_public_address_says_why(live_server, visit) -> None:
    server = start(live_server, **MEGA_OUT_OF_REACH, PUBLIC_BASE_URL=None)
    page = visit(server).open()
    page.get_by_label("Token or ticket").fill(server.env["AUTH_TOKEN"])
    page.get_by_text("ShareX and other clients").click()

    page.get_by_role("button", name="ShareX uploader with my token or ticket").click()

    expect(page.get_by_role("alert")).to_contain_text("PUBLIC_BASE_URL")


def test_docs_render_from_the_service_alone(live_server, visit) -> None:
    server = start(live_server)
    browser_visit = visit(server)
    page = browser_visit.open("/docs")

    page.locator(".opblock-summary-path", has_text="/upload").first.wait_for()

    assert page.locator(".opblock").count() >= 8
    assert browser_visit.outside_requests() == []
    assert browser_visit.console_errors == []


def test_an_upload_goes_on_where_it_stopped_after_the_connection_is_cut(
    live_server, visit, tmp_path: Path
) -> None:
    server = start(live_server)
    path = tmp_path / "cut short.bin"
    size = 24 * MiB
    path.write_bytes(os.urandom(size))
    with CuttingProxy(server.port) as proxy:
        browser_visit = visit(server)
        page = browser_visit.page
        page.goto(proxy.url + "/")
        # A 4 MiB/s uplink, so that the connection is cut while the file is on its way.
        network = browser_visit.context.new_cdp_session(page)
        network.send("Network.enable")
        slow = {"offline": False, "latency": 0, "downloadThroughput": -1}
        network.send("Network.emulateNetworkConditions", {**slow, "uploadThroughput": 4 * MiB})
        proxy.cut_after(14 * MiB)

        upload_files(page, server.env["AUTH_TOKEN"], [path])

        link = page.get_by_role("textbox", name="Link to cut short.bin")
        link.wait_for()
        assert proxy.cuts == 1
        # Went on from what the service had stored, not from the start: the 14 MiB before
        # the cut and the rest after it, with at most a few MiB sent twice.
        assert proxy.sent_up < size + 14 * MiB - 6 * MiB, proxy.sent_up
    assert httpx.get(link.input_value(), timeout=10).content == path.read_bytes()
    assert page.locator("li.file progress").evaluate("bar => bar.value") == 100
    # Chromium resends a PATCH cut on a reused connection by itself; the service's 409
    # ("the upload is further on") is what sends tus-js-client to ask where it stands.
    assert [e for e in browser_visit.console_errors if "409" not in e] == []
