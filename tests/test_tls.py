"""TLS end to end: https:// and wss:// with a certificate made on the fly (trustme)."""

from __future__ import annotations

import ssl
from pathlib import Path

import h11
import orjson
import pytest
import trio
import trustme
from trio_websocket import open_websocket_url

from engine.errors import ConfigError
from engine.tls import server_context
from tests.stack import running_stack

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


async def https_get(host: str, port: int, path: str, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    stream = trio.SSLStream(await trio.open_tcp_stream(host, port), ctx, server_hostname=host)
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        await stream.send_all(
            conn.send(h11.Request(method="GET", target=path,
                                  headers=[("host", host), ("connection", "close")]))
            + conn.send(h11.EndOfMessage())
        )
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            else:
                break
    return status, body


async def test_https_and_wss_end_to_end(redis_url: str, ca: trustme.CA,
                                        cert_files: tuple[str, str]) -> None:
    cert, key = cert_files
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with trio.fail_after(30):
        async with running_stack(
            [redis_url], gateway={"tls_cert_file": cert, "tls_key_file": key}
        ) as st:
            gs = st.gateways[0].settings
            url = st.ws_url()
            assert url.startswith("wss://")
            status, body = await https_get(gs.host, gs.port, "/healthz", client_ctx)
            assert (status, orjson.loads(body)) == (200, {"ok": True})
            status, body = await https_get(gs.host, gs.port, "/v1/dispatch", client_ctx)
            assert orjson.loads(body)["gateways"][0]["url"].startswith("wss://")
            async with open_websocket_url(url, ssl_context=client_ctx) as viewer, \
                    open_websocket_url(url, ssl_context=client_ctx) as sender:
                await viewer.send_message('{"op":"hello"}')
                assert orjson.loads(await viewer.get_message())["op"] == "welcome"
                await viewer.send_message('{"op":"join","room":"tls"}')
                assert orjson.loads(await viewer.get_message())["op"] == "joined"
                await sender.send_message(orjson.dumps(
                    {"op": "hello", "token": st.token("s")}).decode())
                await sender.get_message()
                await sender.send_message('{"op":"join","room":"tls"}')
                await sender.get_message()
                await sender.send_message(
                    '{"op":"send","room":"tls","cmid":"c1","body":{"text":"over tls"}}')
                frames = [orjson.loads(await sender.get_message()) for _ in range(2)]
                assert {f["op"] for f in frames} == {"ack", "batch"}
                batch = orjson.loads(await viewer.get_message())
                assert batch["msgs"][0]["body"]["text"] == "over tls"
            # A plain-text client gets nothing it can use, and the gateway lives on.
            stream = await trio.open_tcp_stream(gs.host, gs.port)
            async with stream:
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                with trio.move_on_after(5):
                    data = await stream.receive_some(4096)
                    assert not data.startswith(b"HTTP/1.1 200")
            # A client that does not trust the certificate refuses it.
            with pytest.raises(trio.BrokenResourceError):
                await https_get(gs.host, gs.port, "/healthz", ssl.create_default_context())
            status, _ = await https_get(gs.host, gs.port, "/healthz", client_ctx)
            assert status == 200


def test_unusable_certificate_files_are_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load TLS certificate"):
        server_context(str(bad), str(bad))
    with pytest.raises(ConfigError):
        server_context(str(tmp_path / "missing.pem"), str(tmp_path / "missing.pem"))
