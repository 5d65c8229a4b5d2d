"""Debian's Chromium, driven by Playwright, against a real `tinygpt serve` of the shipped models
(and one of a bigram over 4,140 tokens, whose table is far larger than one response).

Chromium is the system one (`make test` installs it with apt); Playwright's own browser
downloads are never used. Every page records its console errors, uncaught exceptions and the
hosts it asked for; a test fails at teardown if any of those went wrong.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser.pages import LARGE_BIGRAM
from tests.integration.conftest import (
    REPO,
    Server,
    running_server,
)
from tests.service.test_playground_api import LARGE_VOCAB, save_wide_bigram

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
# The character-level models the README shows; gpt-bpe is left out to keep start-up short.
SHIPPED_MODELS = ("bigram-char", "gpt-char")
ARTIFACTS = REPO / "test-artifacts" / "browser"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
WIDE = {"width": 1280, "height": 800}


# Package scope, not session: Playwright's sync API runs an asyncio loop while it is open,
# and the async (anyio) tests that run after this package cannot start one beside it.
@pytest.fixture(scope="package")
def playwright():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`tinygpt serve` on a free port, on the CPU, with the shipped character-level models."""
    workdir = tmp_path_factory.mktemp("browser-server")
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir()
    for name in SHIPPED_MODELS:
        source = REPO / "checkpoints" / name
        if not source.is_dir():
            pytest.skip(f"the shipped checkpoint {source} is missing")
        (checkpoints / name).symlink_to(source, target_is_directory=True)
    with running_server(checkpoints, workdir, "--device", "cpu") as server:
        yield server


@pytest.fixture(scope="session")
def large_vocab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`tinygpt serve` of one bigram over 4,140 CJK characters (made here, not trained)."""
    workdir = tmp_path_factory.mktemp("browser-large-vocab")
    save_wide_bigram(workdir / "checkpoints" / LARGE_BIGRAM, LARGE_VOCAB)
    with running_server(workdir / "checkpoints", workdir, "--device", "cpu") as server:
        yield server


@pytest.fixture(scope="session")
def api(shipped_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shipped_server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def large_vocab_api(large_vocab_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=large_vocab_server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@dataclass
class PageLog:
    """What a page did that a test should know about."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    hosts: set[str] = field(default_factory=set)
    allowed: list[str] = field(default_factory=list)

    def allow(self, console_error: str) -> None:
        """A console error this test provokes on purpose (it contains `console_error`)."""
        self.allowed.append(console_error)

    def problems(self) -> list[str]:
        foreign = sorted(self.hosts - LOCAL_HOSTS)
        unexpected = [t for t in self.console_errors if not any(a in t for a in self.allowed)]
        return (
            [f"console error: {text}" for text in unexpected]
            + [f"uncaught exception: {text}" for text in self.page_errors]
            + ([f"requests to other hosts: {foreign}"] if foreign else [])
        )


@pytest.fixture
def browser_context(playwright, tmp_path: Path):
    """A fresh Chromium profile per test (its own user-data dir), 1280 x 800 by default."""
    context = playwright.chromium.launch_persistent_context(
        user_data_dir=str(tmp_path / "chromium-profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport=WIDE,
    )
    context.set_default_timeout(15_000)

    # Anything for another host is refused and remembered, so no test can lean on the network.
    def only_local(route):
        if host_of(route.request.url) in LOCAL_HOSTS:
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_local)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


def open_playground(browser_context, page_log: PageLog, server: Server) -> Iterator:
    """The playground, loaded and ready (models listed); fails the test on console errors."""
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    watch(page, page_log)
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready]")
    yield page
    problems = page_log.problems()
    assert not problems, "\n".join(problems)


@pytest.fixture
def page(browser_context, page_log: PageLog, shipped_server: Server):
    """The playground of the shipped models."""
    yield from open_playground(browser_context, page_log, shipped_server)


@pytest.fixture
def large_vocab_page(browser_context, page_log: PageLog, large_vocab_server: Server):
    """The playground of the 4,140-token bigram. Its next-token view asks at once about the
    default prompt, whose Latin letters this vocabulary lacks: that 400, shown in the view,
    is the one console error expected."""
    opened = open_playground(browser_context, page_log, large_vocab_server)
    page = next(opened)
    page.wait_for_selector("#next-error:not([hidden])")
    assert "is not valid for model" in page.text_content("#next-error")
    refused = "the server responded with a status of 400"
    page.wait_for_function("() => true")  # a round trip: the console event has arrived
    assert [refused in text for text in page_log.console_errors] == [True], page_log
    page_log.console_errors.clear()
    yield page
    yield from opened  # its checks on the way out


def watch(page, log: PageLog) -> None:
    page.on("console", lambda m: m.type == "error" and log.console_errors.append(m.text))
    page.on("pageerror", lambda error: log.page_errors.append(str(error)))
    page.on("request", lambda request: log.hosts.add(host_of(request.url)))


def host_of(url: str) -> str:
    """The host a request went to; data: and blob: URLs never leave the page."""
    parts = urlsplit(url)
    return "127.0.0.1" if parts.scheme in ("data", "blob") else parts.hostname or url
