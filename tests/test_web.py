"""The viewer page's HTTP side: /, /r/{room}, /static/..., /v1/rooms; and the JS unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
import trio

from engine.gateway import web
from tests.httpclient import get_json, request
from tests.stack import running_stack
from tests.wsclient import connect

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.redis
async def test_pages_and_static_files(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            base = st.http_url()
            status, headers, body = await request("GET", base + "/")
            assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
            assert b'src="/static/home.js"' in body
            assert "default-src 'self'" in headers["content-security-policy"]
            assert headers["referrer-policy"] == "no-referrer"

            status, headers, body = await request("GET", base + "/r/lobby.main:1")
            assert status == 200 and b'src="/static/player.js"' in body
            assert headers["cache-control"] == "no-cache"  # not the API's no-store as well

            for name, ctype in [
                ("danmaku-client.js", "text/javascript; charset=utf-8"),
                ("player.js", "text/javascript; charset=utf-8"),
                ("style.css", "text/css; charset=utf-8"),
            ]:
                status, headers, body = await request("GET", f"{base}/static/{name}")
                assert status == 200, name
                assert headers["content-type"] == ctype
                assert headers["x-content-type-options"] == "nosniff"
                assert body == (web.STATIC_DIR / name).read_bytes()
                etag = headers["etag"]
                # Revalidation: the same ETag gets an empty 304.
                status, headers, body = await request(
                    "GET", f"{base}/static/{name}", headers={"if-none-match": etag}
                )
                assert status == 304 and body == b"" and headers["etag"] == etag


@pytest.mark.redis
@pytest.mark.parametrize(
    "path",
    [
        "/static/../web.py",
        "/static/%2e%2e/web.py",
        "/static/%2E%2E/%2E%2E/pyproject.toml",
        "/static/..%2fweb.py",
        "/static//etc/passwd",
        "/static/.hidden.js",
        "/static/nope.js",
        "/static/player.html/x",
        "/static/%00.js",
        "/static/%ff.js",
        "/static/..\\web.py",
        "/static/",
        "/r/bad%20room",
        "/r/" + "x" * 65,
        "/r/",
    ],
)
async def test_no_traversal_and_bad_paths(redis_url: str, path: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            status, _headers, body = await request("GET", st.http_url() + path)
            assert status == 404, (path, body[:200])
            assert b"import " not in body and b"[project]" not in body


def test_static_loader_refuses_unknown_types_and_symlinks(tmp_path: Path) -> None:
    assert web.load_static("danmaku-client.js") is not None
    assert web.load_static("../web.py") is None
    assert web.load_static("a/../../web.py") is None
    link = web.STATIC_DIR / "zz-test-link.js"
    target = tmp_path / "secret.js"
    target.write_text("secret")
    try:
        link.symlink_to(target)
        assert web.load_static("zz-test-link.js") is None  # points outside static/
    finally:
        link.unlink(missing_ok=True)


@pytest.mark.redis
async def test_methods(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            for path in ("/", "/r/lobby", "/static/style.css", "/v1/rooms"):
                status, headers, _body = await request("POST", st.http_url() + path, body=b"")
                assert status == 405 and headers["allow"] == "GET", path


@pytest.mark.redis
async def test_room_list_counts_viewers(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url], gateways=2) as st:
            status, body = await get_json(st.http_url() + "/v1/rooms")
            assert status == 200 and body["rooms"] == []
            async with connect(st.ws_url(0), None) as a, connect(st.ws_url(0), None) as b, \
                    connect(st.ws_url(1), None) as c, connect(st.ws_url(0), None) as d:
                await a.join("busy")
                await b.join("busy")
                await c.join("busy")  # on the other gateway: counted in `online`
                await d.join("quiet")
                status, body = await get_json(st.http_url(0) + "/v1/rooms")
                assert status == 200
                assert body["rooms"] == [
                    {"room": "busy", "online": 3, "here": 2},
                    {"room": "quiet", "online": 1, "here": 1},
                ]
                status, body = await get_json(st.http_url(0) + "/v1/rooms?limit=1")
                assert [r["room"] for r in body["rooms"]] == ["busy"]
                status, body = await get_json(st.http_url(0) + "/v1/rooms?limit=0")
                assert status == 400 and body["error"]["code"] == "bad_request"
                await d.send({"op": "leave", "room": "quiet"})
                await d.expect("left")
                status, body = await get_json(st.http_url(0) + "/v1/rooms")
                # A room whose last viewer left (its hub lingers) is not listed.
                assert [r["room"] for r in body["rooms"]] == ["busy"]


@pytest.mark.redis
async def test_api_paths_still_answer(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            status, body = await get_json(st.http_url() + "/v1/rooms/lobby")
            assert status == 200 and body["room"] == "lobby"
            status, headers, raw = await request("GET", st.http_url() + "/v1/nope")
            assert status == 404 and orjson.loads(raw)["error"]["code"] == "not_found"
            assert headers["cache-control"] == "no-store"


def test_js_unit_tests_pass() -> None:
    """node --test over web/tests/ (the client module's resume/dedupe tests, the overlay's)."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed (.ci/run installs Debian's nodejs)")
        pytest.skip("node is not installed (apt-get install nodejs)")
    files = sorted(str(p) for p in (ROOT / "web" / "tests").glob("*.test.mjs"))
    assert files, "no JS test files under web/tests/"
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
