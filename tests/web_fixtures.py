"""Support for the browser tests: a real engine in a thread, and Debian's Chromium via Playwright.

The browser is driven with Playwright's *sync* API, so a test is a plain (non-trio) function; the
engine (``running_stack``: gateway + worker on real Redis) runs in its own thread with its own
trio loop. ``EngineThread.restart()`` stops the stack (every WebSocket is closed with 1001) and
starts a new one on the same port with the same Redis, as an operator's restart would.

Chromium is Debian's package (``/usr/bin/chromium``, installed by ``.ci/run``); Playwright never
downloads a browser here. Each launch gets a fresh temporary profile (Playwright makes a new
``--user-data-dir`` per launch and removes it after).
"""

from __future__ import annotations

import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from tests.stack import Stack, running_stack

CHROMIUM = os.environ.get("DANMAKU_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT_DIR = Path(__file__).resolve().parent.parent / "test-output" / "web"


def require_browser() -> None:
    """Skip (or, under CI, fail) when Chromium or Playwright is missing."""
    problems = []
    if shutil.which(CHROMIUM) is None:
        problems.append(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is not installed (pip install -e '.[dev]')")
    if problems:
        message = "browser tests need " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright ``Browser``), closed at the end."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        )
        try:
            yield browser
        finally:
            browser.close()


StackFactory = Callable[..., AbstractAsyncContextManager[Stack]]


class EngineThread:
    """A ``running_stack`` served from a background thread, restartable on the same port.

    ``stack_factory`` replaces ``running_stack`` (same signature: redis URLs, ``gateway=`` and
    keywords), e.g. for an engine with an archive.
    """

    def __init__(self, redis_urls: Sequence[str], *, stack_factory: StackFactory = running_stack,
                 **stack_kw: Any) -> None:
        self.stack_factory = stack_factory
        self.redis_urls = list(redis_urls)
        self.gateway_kw: dict[str, Any] = stack_kw.pop("gateway", {})
        self.stack_kw = stack_kw
        self.port = 0
        self.stack: Stack | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = threading.Event()
        self._error = None

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            gateway = {**self.gateway_kw, "port": self.port}
            try:
                async with self.stack_factory(
                    self.redis_urls, gateway=gateway, **self.stack_kw
                ) as st:
                    self.stack = st
                    self.port = st.gateways[0].settings.port
                    ready.set()
                    await self._stop.wait()
            finally:
                self.stack = None

        def run() -> None:
            try:
                trio.run(main)
            except BaseException as exc:
                self._error = exc
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name="engine", daemon=True)
        self._thread.start()
        if not ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the engine did not start: {self._error!r}")

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._token is not None and self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)
        if self._thread.is_alive():
            raise RuntimeError("the engine did not stop within 30 s")
        self._thread = None
        if self._error is not None:
            raise RuntimeError(f"the engine failed: {self._error!r}") from self._error

    def restart(self) -> None:
        """Stop, then start a new stack on the same port with the same Redis."""
        self.stop()
        self.start()

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` in the engine's trio loop."""
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def token(self, user: str, **kw: Any) -> str:
        from engine.tokens import mint_token
        from tests.stack import SECRET

        return mint_token(SECRET, user=user, **kw)

    # -- plain HTTP from the test's thread ------------------------------------------------------
    def http(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        data = None if body is None else orjson.dumps(body)
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers.items()), exc.read()

    def post_message(self, room: str, token: str, cmid: str, body: dict[str, Any]) -> Any:
        status, _h, raw = self.http("POST", f"/v1/rooms/{room}/messages",
                                    {"cmid": cmid, "body": body},
                                    {"authorization": f"Bearer {token}"})
        return status, orjson.loads(raw)


@contextmanager
def engine_thread(redis_urls: Sequence[str], **stack_kw: Any) -> Iterator[EngineThread]:
    engine = EngineThread(redis_urls, **stack_kw)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def screenshot(page: Any, name: str) -> Path:
    """Save a PNG of the page under test-output/web/ and return its path."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / f"{name}.png"
    page.screenshot(path=str(path))
    return path
