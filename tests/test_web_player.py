"""The viewer page end to end: headless Chromium (Debian's) against a real engine on real Redis.

Each test drives real pages over a real WebSocket: nothing on the page is faked. The page keeps
a JS-side log (``window.__dm``: delivered seqs, connection states, comments shown) that the
tests read next to the DOM. Screenshots go to test-output/web/ (gitignored).
"""

from __future__ import annotations

import importlib.util
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio

from tests.web_fixtures import EngineThread, chromium, engine_thread, screenshot
from tests.wsclient import connect

pytestmark = pytest.mark.redis

# Replay needs an engine with an archive (issue 3): its fixtures, when they are there.
HAVE_ARCHIVE = (
    importlib.util.find_spec("engine.archive") is not None
    and importlib.util.find_spec("tests.archive_fixtures") is not None
)
if HAVE_ARCHIVE:
    pytest_plugins = ["tests.archive_fixtures"]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 15_000

# Browser noise that a restart is expected to cause (refused connections while it is down).
EXPECTED_WHILE_DOWN = ("ERR_CONNECTION_REFUSED", "WebSocket connection to", "Failed to fetch",
                       "Failed to load resource")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def engine(redis_url: str) -> Iterator[EngineThread]:
    with engine_thread([redis_url]) as eng:
        yield eng


class Pages:
    """Opens pages, each in its own browser context (its own storage), and checks their logs."""

    def __init__(self, browser: Any, engine: EngineThread) -> None:
        self.browser = browser
        self.engine = engine
        self.contexts: list[Any] = []
        self.errors: list[str] = []

    def open(self, path: str, *, viewport: dict[str, int] = DESKTOP,
             wait_state: str | None = "open", **context_kw: Any) -> Any:
        ctx = self.browser.new_context(viewport=viewport, **context_kw)
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        page.goto(self.engine.base_url + path)
        if wait_state:
            page.wait_for_function(
                f"() => window.__dm && window.__dm.states.includes({wait_state!r})",
                timeout=WAIT_MS,
            )
        return page

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()


@pytest.fixture
def pages(browser: Any, engine: EngineThread) -> Iterator[Pages]:
    p = Pages(browser, engine)
    try:
        yield p
    finally:
        p.close()


def send_via_ui(page: Any, text: str, *, mode: str = "scroll", color: str | None = None) -> None:
    page.fill("#text", text)
    page.select_option("#mode", mode)
    if color is not None:
        page.eval_on_selector(
            "#color", "(el, c) => { el.value = c; el.dispatchEvent(new Event('input')); }", color
        )
    page.press("#text", "Enter")


def wait_status(page: Any, predicate_js: str) -> str:
    page.wait_for_function(
        f"() => {{ const s = document.getElementById('send-status'); return {predicate_js}; }}",
        timeout=WAIT_MS,
    )
    return str(page.inner_text("#send-status"))


def delivered(page: Any) -> list[int]:
    return list(page.evaluate("window.__dm.delivered"))


def poll(fn: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


_cmids = itertools.count(1)


def post(engine: EngineThread, room: str, user: str, text: str, **body: Any) -> int:
    status, ack = engine.post_message(room, engine.token(user, name=user.title()),
                                      f"t{next(_cmids)}", {"text": text, **body})
    assert status == 200, ack
    return int(ack["seq"])


# -- live: one page sends, the other renders -------------------------------------------------------
def test_one_page_sends_the_other_renders(pages: Pages) -> None:
    eng = pages.engine
    sender = pages.open("/r/lobby?token=" + eng.token("alice", name="Alice"))
    viewer = pages.open("/r/lobby")  # a guest

    # The guest's send box is disabled, with a hint; the token left the address bar.
    assert viewer.is_disabled("#text") and viewer.is_visible("#guest-hint")
    assert "token=" not in sender.url
    assert sender.is_enabled("#text") and not sender.is_visible("#guest-hint")
    assert sender.inner_text("#who") == "Signed in as Alice"

    send_via_ui(sender, "hello from alice", color="#ff8800")
    assert wait_status(sender, "s.dataset.kind === 'ok'").startswith("Sent ✓ (#1)")

    viewer.wait_for_selector('#overlay .dm[data-seq="1"]', timeout=WAIT_MS)
    node = viewer.query_selector('#overlay .dm[data-seq="1"]')
    assert node is not None
    assert node.inner_text() == "hello from alice"
    assert node.evaluate("el => getComputedStyle(el).color") == "rgb(255, 136, 0)"
    assert viewer.inner_text('#log li[data-seq="1"]') == "Alice: hello from alice"
    # The sender sees its own comment (outlined) through the same delivery path.
    sender.wait_for_selector('#overlay .dm.dm-own[data-seq="1"]', timeout=WAIT_MS)

    # Top and bottom comments are pinned; the online count and connection state show.
    send_via_ui(sender, "pinned on top", mode="top")
    send_via_ui(sender, "pinned at the bottom", mode="bottom", color="#66ccff")
    viewer.wait_for_selector('#overlay .dm-top[data-seq="2"]', timeout=WAIT_MS)
    viewer.wait_for_selector('#overlay .dm-bottom[data-seq="3"]', timeout=WAIT_MS)
    box = viewer.query_selector("#overlay").bounding_box()
    bottom = viewer.query_selector('#overlay .dm-bottom[data-seq="3"]').bounding_box()
    assert abs((bottom["y"] + bottom["height"]) - (box["y"] + box["height"])) < 4
    path = screenshot(viewer, "two-pages-viewer")
    screenshot(sender, "two-pages-sender")
    assert viewer.inner_text("#online-count") == "2"
    assert viewer.get_attribute("#conn", "data-state") == "live"
    assert viewer.inner_text("#conn") == "Live"
    assert delivered(viewer) == [1, 2, 3]
    assert path.stat().st_size > 10_000
    assert pages.errors == []


def test_home_lists_live_rooms_with_online_counts(pages: Pages) -> None:
    pages.open("/r/stage-1")
    pages.open("/r/stage-1")
    pages.open("/r/stage-2")
    home = pages.open("/", wait_state=None)
    home.wait_for_selector('#rooms li[data-room="stage-1"]', timeout=WAIT_MS)
    items = home.eval_on_selector_all(
        "#rooms li", "els => els.map(e => [e.dataset.room, e.querySelector('.count').textContent])"
    )
    assert items == [["stage-1", "2 watching"], ["stage-2", "1 watching"]]
    home.click('#rooms li[data-room="stage-2"] a.name')
    home.wait_for_function("() => window.__dm && window.__dm.room === 'stage-2'", timeout=WAIT_MS)
    screenshot(home, "home")
    assert pages.errors == []


# -- reconnect and resume ------------------------------------------------------------------------
def test_server_restart_resumes_without_duplicates(pages: Pages) -> None:
    eng = pages.engine
    viewer = pages.open("/r/show")
    sender = pages.open("/r/show?token=" + eng.token("bob", name="Bob"))
    for i in range(3):
        send_via_ui(sender, f"before restart {i}")
        wait_status(sender, f"s.textContent.startsWith('Sent ✓ (#{i + 1})')")
    viewer.wait_for_function("() => window.__dm.delivered.length === 3", timeout=WAIT_MS)

    eng.stop()  # every WebSocket is closed with 1001
    viewer.wait_for_function(
        "() => document.getElementById('conn').dataset.state === 'reconnecting'", timeout=WAIT_MS
    )
    assert "Reconnecting" in viewer.inner_text("#conn")
    # A comment typed while the server is away is queued, then resent with the same cmid.
    sender.wait_for_function("() => window.__dm.client.state === 'reconnecting'", timeout=WAIT_MS)
    send_via_ui(sender, "typed while down")
    assert "Queued" in wait_status(sender, "s.dataset.kind === 'pending'")
    queued = sender.evaluate("window.__dm.client.pendingCmids()")
    assert len(queued) == 1
    time.sleep(1.0)  # stay down for a few backoff rounds

    eng.start()  # the same port, the same Redis
    # Sent right away, usually before the pages are back: they get it from the resume (since).
    seq_http = post(eng, "show", "carol", "sent during the reconnect")
    viewer.wait_for_function("() => window.__dm.states.includes('resumed')", timeout=WAIT_MS)
    acked = wait_status(sender, "s.dataset.kind === 'ok'")
    assert {seq_http, int(acked.removeprefix("Sent ✓ (#").rstrip(")"))} == {4, 5}
    viewer.wait_for_function("() => window.__dm.delivered.length >= 5", timeout=WAIT_MS)
    seq_after = post(eng, "show", "carol", "after the restart")
    viewer.wait_for_function(f"() => window.__dm.delivered.includes({seq_after})", timeout=WAIT_MS)
    time.sleep(0.5)  # any duplicate would have arrived by now

    assert delivered(viewer) == [1, 2, 3, 4, 5, 6]
    dom_seqs = viewer.eval_on_selector_all("#log li", "els => els.map(e => Number(e.dataset.seq))")
    assert dom_seqs == [1, 2, 3, 4, 5, 6]  # one list item per message, in order
    overlay_seqs = viewer.eval_on_selector_all(
        "#overlay .dm", "els => els.map(e => Number(e.dataset.seq))"
    )
    assert len(overlay_seqs) == len(set(overlay_seqs))
    assert viewer.evaluate("window.__dm.shownSeqs.length === new Set(window.__dm.shownSeqs).size")
    states = viewer.evaluate("window.__dm.states")
    assert states[0] == "connecting" and "open" in states
    assert states.index("reconnecting") < states.index("resumed")
    assert viewer.evaluate("window.__dm.client.connections") == 2
    assert sender.evaluate("window.__dm.client.pendingCmids()") == []
    assert viewer.get_attribute("#conn", "data-state") in ("resumed", "live")
    screenshot(viewer, "after-restart-viewer")
    assert [e for e in pages.errors if not any(x in e for x in EXPECTED_WHILE_DOWN)] == []


# -- nacks -----------------------------------------------------------------------------------------
def mod_op(eng: EngineThread, token: str, frame: dict[str, Any]) -> dict[str, Any]:
    """Send one `mod` op (the moderation extension) over a plain WebSocket; its answer."""

    async def go() -> dict[str, Any]:
        async with connect(f"ws://127.0.0.1:{eng.port}/ws", token) as ws:
            await ws.send({**frame, "ref": "t1"})
            return await ws.take(lambda f: f["op"] in ("mod_result", "error"))

    return trio.run(go)


def set_slow_mode_or_skip(eng: EngineThread, room: str, seconds: int) -> None:
    answer = mod_op(eng, eng.token("boss", name="Boss", role="streamer"),
                    {"op": "mod", "room": room, "action": "config", "config": {"slow_s": seconds}})
    if answer["op"] != "mod_result":
        pytest.skip(f"no way to make the engine rate-limit a sender: slow mode through the `mod` "
                    f"op (issue 5) answered {answer}")


def test_rate_limited_send_shows_countdown(pages: Pages) -> None:
    eng = pages.engine
    set_slow_mode_or_skip(eng, "fast", 3)  # one comment per 3 s: a real rate_limited nack
    sender = pages.open("/r/fast?token=" + eng.token("speedy", name="Speedy"))
    send_via_ui(sender, "first")
    assert wait_status(sender, "s.dataset.kind === 'ok'").startswith("Sent ✓")
    send_via_ui(sender, "second, too soon")
    text = wait_status(sender, "s.dataset.kind === 'wait'")
    assert sender.get_attribute("#send-status", "data-code") == "rate_limited"
    assert text in (f"Slow down: you can send again in {n} s." for n in (3, 2))
    assert sender.is_disabled("#send")
    assert sender.input_value("#text") == "second, too soon"  # kept for the retry
    # Enter during the countdown sends nothing.
    sender.press("#text", "Enter")
    assert sender.evaluate("window.__dm.client.pendingCmids().length") == 0
    screenshot(sender, "rate-limited")
    # The countdown goes down, then sending is possible again.
    sender.wait_for_function(
        "() => document.getElementById('send-status').textContent.endsWith('in 1 s.')",
        timeout=WAIT_MS,
    )
    wait_status(sender, "s.textContent === 'You can send again.'")
    assert sender.is_enabled("#send")
    sender.press("#text", "Enter")
    assert wait_status(sender, "s.dataset.kind === 'ok'").startswith("Sent ✓")


def test_refused_token_falls_back_to_watching_as_a_guest(pages: Pages) -> None:
    eng = pages.engine
    forged = eng.token("eve", name="Eve").rsplit(".", 1)[0] + ".bm90LXRoZS1zaWduYXR1cmU"
    page = pages.open("/r/lobby?token=" + forged, wait_state=None)
    page.wait_for_function(
        "() => document.getElementById('who').textContent"
        " === 'Token refused by the server: watching as a guest'",
        timeout=WAIT_MS,
    )
    page.wait_for_function("() => window.__dm.client.state === 'open'", timeout=WAIT_MS)
    assert page.evaluate("window.__dm.client.welcome.guest") is True
    assert page.is_disabled("#text") and page.is_visible("#guest-hint")
    post(eng, "lobby", "amy", "guests still see this")
    page.wait_for_function("() => window.__dm.delivered.length === 1", timeout=WAIT_MS)
    # A good token typed into the token box signs in (and is kept in this browser).
    page.click("#token-box summary")
    page.fill("#token", eng.token("eve", name="Eve"))
    page.press("#token", "Enter")
    page.wait_for_function("() => !document.getElementById('text').disabled", timeout=WAIT_MS)
    assert page.inner_text("#who") == "Signed in as Eve"
    assert page.evaluate("localStorage.getItem('danmaku.token')").startswith("eyJ")
    page.reload()
    page.wait_for_function("() => window.__dm && window.__dm.states.includes('open')",
                           timeout=WAIT_MS)
    assert page.inner_text("#who") == "Signed in as Eve"
    # The bad token's refusal shows in the console as a failed WebSocket at most.
    assert [e for e in pages.errors if "WebSocket" not in e] == []


def test_too_long_nack_is_explained(pages: Pages) -> None:
    eng = pages.engine
    sender = pages.open("/r/lobby?token=" + eng.token("dan", name="Dan"))
    # Past the input's maxlength (a script, or a paste into an older browser): the server's nack.
    sender.evaluate(
        "() => { const el = document.getElementById('text'); el.removeAttribute('maxlength');"
        " el.value = 'y'.repeat(250); }"
    )
    sender.press("#text", "Enter")
    text = wait_status(sender, "s.dataset.kind === 'error'")
    assert text == "Too long: at most 200 characters." or text.startswith("Too long")
    assert sender.get_attribute("#send-status", "data-code") == "too_long"
    assert sender.input_value("#text") == "y" * 250  # kept, to be shortened


# -- display controls --------------------------------------------------------------------------
def test_density_toggle_and_dropping_when_full(pages: Pages) -> None:
    eng = pages.engine
    viewer = pages.open("/r/flood")
    viewer.fill("#density", "10")  # range inputs take fill(); fires input
    assert viewer.inner_text("#density-value") == "10%"
    rows = viewer.evaluate("window.__dm.overlay.lanes.usable")
    assert rows >= 1
    for i in range(30):
        post(eng, "flood", f"u{i % 5}", f"flood message number {i}")
    viewer.wait_for_function("() => window.__dm.delivered.length === 30", timeout=WAIT_MS)
    stats = viewer.evaluate("({...window.__dm.overlay.stats, on: window.__dm.overlay.onScreen})")
    # Dropped, not queued: what is on screen fits the rows in use.
    assert stats["dropped"] > 0
    assert stats["shown"] + stats["dropped"] == 30
    assert stats["on"] <= rows * 2  # a row holds at most a few comments following each other
    # No two scroll comments overlap on screen.
    overlaps = viewer.evaluate(
        """() => {
          const rects = [...document.querySelectorAll('#overlay .dm-scroll')]
            .map(e => e.getBoundingClientRect());
          let n = 0;
          for (let i = 0; i < rects.length; i++) for (let j = i + 1; j < rects.length; j++) {
            const a = rects[i], b = rects[j];
            if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) n++;
          }
          return n;
        }"""
    )
    assert overlaps == 0
    screenshot(viewer, "density-10-percent")
    # The toggle hides comments (keyboard: Enter on the focused button) and says so.
    viewer.focus("#toggle")
    viewer.keyboard.press("Enter")
    assert viewer.get_attribute("#toggle", "aria-pressed") == "false"
    assert not viewer.is_visible("#overlay .dm") if viewer.query_selector("#overlay .dm") else True
    post(eng, "flood", "u1", "while hidden")
    viewer.wait_for_function("() => window.__dm.delivered.length === 31", timeout=WAIT_MS)
    assert viewer.evaluate("window.__dm.shownSeqs.includes(31)") is False
    viewer.keyboard.press("Enter")
    assert viewer.get_attribute("#toggle", "aria-pressed") == "true"


def test_phone_viewport_and_accessibility(pages: Pages) -> None:
    eng = pages.engine
    phone = pages.open("/r/lobby?token=" + eng.token("pat", name="Pat"), viewport=PHONE,
                       device_scale_factor=2, is_mobile=True, has_touch=True)
    for i in range(6):
        post(eng, "lobby", f"v{i}", f"comment {i} on a phone", color="#ffd60a" if i % 2 else None)
    phone.wait_for_function("() => window.__dm.delivered.length === 6", timeout=WAIT_MS)
    time.sleep(1.5)  # let the comments fly in for the screenshot
    # Nothing wider than the screen; the stage, the send box and the controls are on screen.
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for sel in ("#stage", "#text", "#send", "#toggle", "#density", "#conn"):
        box = phone.query_selector(sel).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], sel
    # Every control has an accessible name; status regions are live.
    unnamed = phone.evaluate(
        """() => [...document.querySelectorAll('input, select, button')]
            .filter(el => !el.closest('[hidden]'))
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !el.textContent.trim())
            .map(el => el.id || el.outerHTML)"""
    )
    assert unnamed == []
    assert phone.get_attribute("#conn", "role") == "status"
    assert phone.get_attribute("#send-status", "aria-live") == "polite"
    assert phone.get_attribute("#log", "role") == "log"
    screenshot(phone, "phone-390x844")
    desktop = pages.open("/r/lobby")
    post(eng, "lobby", "v9", "and one for the desktop", mode="top", color="#30d158")
    desktop.wait_for_function("() => window.__dm.delivered.length >= 1", timeout=WAIT_MS)
    time.sleep(0.5)
    screenshot(desktop, "desktop-1280x800")


def test_video_source_replaces_the_test_pattern(pages: Pages) -> None:
    eng = pages.engine
    page = pages.open("/r/lobby?src=/static/no-such-video.webm&token=" + eng.token("val"))
    assert page.is_visible("#video") and not page.is_visible("#pattern")
    assert page.get_attribute("#video", "src") == "/static/no-such-video.webm"
    assert page.evaluate("document.getElementById('video').muted") is True  # may autoplay
    # offset_ms of a send is the video's position (0 here: nothing could play).
    send_via_ui(page, "over a video")
    wait_status(page, "s.dataset.kind === 'ok'")
    status, _h, body = eng.http("GET", "/v1/rooms/lobby/messages?after=0")
    assert status == 200
    assert [m["body"]["offset_ms"] for m in orjson.loads(body)["msgs"]] == [0]
    # Only the missing video's 404 shows in the console.
    assert [e for e in pages.errors if "404" not in e] == []


def test_moderator_panel_mutes_and_sets_slow_mode(pages: Pages) -> None:
    eng = pages.engine
    probe = mod_op(eng, eng.token("boss", role="streamer"),
                   {"op": "mod", "room": "mods", "action": "get_config"})
    vic = pages.open("/r/mods?token=" + eng.token("vic", name="Vic"))
    mod = pages.open("/r/mods?token=" + eng.token("mia", name="Mia", role="moderator"))
    assert not vic.is_visible("#mod-panel")  # never for a plain viewer
    if probe["op"] != "mod_result":
        time.sleep(1.0)
        assert not mod.is_visible("#mod-panel")  # the feature check keeps it hidden
        pytest.skip(f"the engine has no `mod` op (issue 5): answered {probe}; panel hidden")
    mod.wait_for_selector("#mod-panel", state="visible", timeout=WAIT_MS)
    assert mod.inner_text("#mod-config") == "Slow mode off."

    send_via_ui(vic, "spam spam spam")
    wait_status(vic, "s.dataset.kind === 'ok'")
    mod.wait_for_selector('#log li[data-seq="1"]', timeout=WAIT_MS)
    assert mod.is_disabled('[data-mod="mute"]')  # nobody selected yet
    mod.focus('#log li[data-seq="1"]')  # keyboard: the comment is focusable, Enter selects it
    mod.keyboard.press("Enter")
    assert "Vic" in mod.inner_text("#mod-target")
    mod.select_option("#mod-duration", "60000")
    mod.click('[data-mod="mute"]')
    mod.wait_for_function(
        "() => document.getElementById('mod-status').dataset.kind === 'ok'", timeout=WAIT_MS
    )
    assert mod.inner_text("#mod-status").startswith("Vic muted until ")
    screenshot(mod, "moderator-panel")

    send_via_ui(vic, "am I muted?")
    muted = wait_status(vic, "s.dataset.kind === 'error'")
    assert muted.startswith("You are muted in this room for ") and muted.endswith(" more s.")
    assert vic.get_attribute("#send-status", "data-code") == "muted"

    mod.click('[data-mod="unmute"]')
    mod.wait_for_function(
        "() => document.getElementById('mod-status').textContent === 'Vic unmuted.'",
        timeout=WAIT_MS,
    )
    mod.select_option("#mod-slow", "10")
    mod.click('[data-mod="slow"]')
    mod.wait_for_function(
        "() => document.getElementById('mod-status').textContent"
        " === 'Slow mode on: one comment per 10 s.'",
        timeout=WAIT_MS,
    )
    vic.fill("#text", "")
    send_via_ui(vic, "one")
    assert wait_status(vic, "s.dataset.kind === 'ok'").startswith("Sent ✓")
    send_via_ui(vic, "two")
    text = wait_status(vic, "s.dataset.kind === 'wait'")
    assert text.startswith("Slow down: you can send again in ") and text.endswith(" s.")
    assert 8 <= int(text.split(" in ")[1].split(" ")[0]) <= 10
    assert pages.errors == []


# -- replay --------------------------------------------------------------------------------------
def _archive_factory(dsn: str) -> Any:
    """A stack factory for EngineThread: gateway + worker + archiver with an archive at `dsn`."""
    from engine.archive.store import open_store
    from tests.archive_fixtures import archive_stack

    @asynccontextmanager
    async def factory(urls: list[str], **kw: Any) -> AsyncIterator[Any]:
        store = open_store(dsn)
        await store.ensure_schema()
        try:
            async with archive_stack(urls, store, **kw) as st:
                yield st
        finally:
            await store.aclose()

    return factory


def _replay_msgs(eng: EngineThread, room: str) -> list[dict[str, Any]]:
    status, _h, body = eng.http("GET", f"/v1/rooms/{room}/replay?from_ms=0&to_ms=100000&limit=10")
    assert status == 200, body
    return list(orjson.loads(body)["msgs"])


def test_replay_shows_archived_comments_on_time(
    browser: Any, redis_url: str, request: pytest.FixtureRequest
) -> None:
    if not HAVE_ARCHIVE:
        pytest.skip("the archive (engine.archive, tests/archive_fixtures.py: issue 3) is not "
                    "importable, so GET /v1/rooms/{room}/replay has nothing to serve")
    chdb_dir = request.getfixturevalue("chdb_dir")
    dsn = f"chdb://{chdb_dir}?database=t_{uuid.uuid4().hex[:12]}"
    with engine_thread([redis_url], stack_factory=_archive_factory(dsn)) as eng:
        pages = Pages(browser, eng)
        try:
            _check_replay(eng, pages)
        finally:
            pages.close()


def _check_replay(eng: EngineThread, pages: Pages) -> None:
    # The last comment, a minute in, makes the broadcast (the test pattern runs to the last
    # offset + 5 s) long enough that playback is still running when the test pauses it, however
    # slow the machine: with 6 s as the last offset it could end first, and the click played.
    offsets = {1500: "at one and a half", 3000: "at three seconds", 6000: "at six seconds",
               60_000: "a minute in"}
    for offset, text in offsets.items():
        post(eng, "vod", "streamer", text, offset_ms=offset)
    poll(lambda: len(_replay_msgs(eng, "vod")) == 4, 30, "the four messages in the archive")

    page = pages.open("/r/vod?replay=1", wait_state=None)
    page.wait_for_function("() => window.__dm.replayLoaded === 4", timeout=WAIT_MS)
    assert page.is_visible("#timeline") and not page.is_visible("#send-form")
    page.wait_for_function("() => window.__dm.replayShown.length >= 2", timeout=WAIT_MS)
    shown = page.evaluate("window.__dm.replayShown")
    for item in shown:
        # Shown when the playback reached its offset, not before, and promptly after.
        assert 0 <= item["at_ms"] - item["offset_ms"] < 400, item
    assert [s["offset_ms"] for s in shown[:2]] == [1500, 3000]
    page.wait_for_selector('#overlay .dm[data-seq="2"]', timeout=WAIT_MS)
    screenshot(page, "replay")
    # Pause stops the flow: the playback position and the overlay freeze.
    page.click("#play")
    assert page.get_attribute("#play", "aria-label") == "Play"
    frozen = page.evaluate("window.__dm.playback.currentMs()")
    n = len(page.evaluate("window.__dm.replayShown"))
    box = page.query_selector('#overlay .dm[data-seq="2"]')
    x0 = box.bounding_box()["x"] if box else None
    time.sleep(0.8)
    assert page.evaluate("window.__dm.playback.currentMs()") == frozen
    assert len(page.evaluate("window.__dm.replayShown")) == n
    if box is not None and x0 is not None:
        assert box.bounding_box()["x"] == x0  # the comment stopped moving too
    screenshot(page, "replay-paused")
    # Seek (the timeline slider) to just before 6 s, then play: the last one appears on time.
    page.fill("#timeline", "5500")
    assert page.query_selector_all("#overlay .dm") == []  # a seek clears the screen
    page.click("#play")
    page.wait_for_function(
        "() => window.__dm.replayShown.some(s => s.offset_ms === 6000)", timeout=WAIT_MS
    )
    last = page.evaluate("window.__dm.replayShown.at(-1)")
    assert last["offset_ms"] == 6000 and 0 <= last["at_ms"] - 6000 < 400
    assert page.is_visible('#log li[data-seq="3"]')
    # Seeking back before 1.5 s shows the first comment again, at its time.
    page.fill("#timeline", "1000")
    page.wait_for_function(
        "() => window.__dm.replayShown.filter(s => s.offset_ms === 1500).length === 2",
        timeout=WAIT_MS,
    )
    again = [s for s in page.evaluate("window.__dm.replayShown") if s["offset_ms"] == 1500][-1]
    assert 0 <= again["at_ms"] - 1500 < 400
    assert pages.errors == []
