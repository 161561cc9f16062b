"""Credentials on the HTTP side: a real tapio-server process with --auth-token-file, asked over real
HTTP on 127.0.0.1; and the refusal to serve off loopback with no token at all."""
import json
import os
import subprocess

import pytest

from tests.helpers import BIN, ServerProcess, free_port, http_get

TOKENS = """\
tok-reader reader
tok-shop reader namespaces=shop
tok-collector collector
tok-admin admin
"""

API = ["/api/v1", "/api/v1/stats", "/api/v1/collectors", "/api/v1/vocabulary", "/api/v1/events",
       "/api/v1/groups", f"/api/v1/groups/{1:032x}"]
OPEN = ["/healthz", "/readyz", "/", "/dashboard/app.js", "/dashboard/style.css", "/metrics"]


def get(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http_get(url, headers=headers)


@pytest.fixture
def server(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    s = ServerProcess(tmp_path, ["--auth-token-file", str(tokens)], http=True).wait_listening()
    yield s
    assert s.stop() == 0, s.log()


def test_the_api_needs_a_reader_or_admin_token(server):
    url = server.http_url
    for path in API:
        status, headers, body = get(url + path)
        assert status == 401, (path, body)
        assert headers["www-authenticate"] == 'Bearer realm="tapio"'
        assert "bearer token" in json.loads(body)["error"]
        assert get(url + path, "not-a-token")[0] == 401, path
        status, _, body = get(url + path, "tok-collector")
        assert status == 403 and "collector token may not read" in json.loads(body)["error"], path
        for token in ("tok-reader", "tok-shop", "tok-admin"):
            status, _, body = get(url + path, token)
            assert status == (404 if path.startswith("/api/v1/groups/") else 200), (path, token, body)
    for path in OPEN:
        assert get(url + path)[0] == 200, path
    status, _, body = get(url + "/api/v1/stats", "tok-admin")
    stats = json.loads(body)
    assert stats["streams_refused"] >= 2 * len(API) and stats["calls_denied"] >= len(API)


def test_the_dashboard_asks_for_a_token_and_sends_it(server):
    _, _, page = get(server.http_url + "/")
    _, _, script = get(server.http_url + "/dashboard/app.js")
    assert b'id="login"' in page and b'type="password"' in page
    assert b"sessionStorage" in script and b"authorization" in script and b"Bearer" in script
    assert b"localStorage" not in script        # gone with the tab, never kept on disk


def run_server(*flags, timeout=30):
    return subprocess.run([os.path.join(BIN, "tapio-server"), "--grpc-port", str(free_port()), *flags],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TAPIO_HTTP_PORT": "0"})


REFUSED = [
    (["--host", "0.0.0.0"], "gRPC on 0.0.0.0"),
    (["--host", "::"], "gRPC on ::"),
    (["--host", "127.0.0.1", "--http-host", "0.0.0.0", "--http-port", "{port}"], "HTTP on 0.0.0.0"),
    (["--host", "0.0.0.0", "--http-port", "{port}"], "gRPC on 0.0.0.0 and HTTP on 0.0.0.0"),
]


@pytest.mark.parametrize("flags, what", REFUSED)
def test_no_token_off_loopback_is_refused_in_one_line(tmp_path, flags, what):
    flags = [f.replace("{port}", str(free_port())) for f in flags]
    result = run_server(*flags, "--db", str(tmp_path / "db"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"tapio-server: refusing to serve {what} without authentication: give --auth-token-file, "
        "listen on loopback (--host 127.0.0.1, --http-host 127.0.0.1), or pass --allow-unauthenticated"]


@pytest.mark.parametrize("flags", [["--allow-unauthenticated"], ["--auth-token-file", "{tokens}"]])
def test_off_loopback_starts_with_a_token_or_when_allowed(tmp_path, flags):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    flags = [f.replace("{tokens}", str(tokens)) for f in flags]
    server = ServerProcess(tmp_path, ["--host", "0.0.0.0", *flags])
    try:
        server.wait_log("Tapio server listening")
    finally:
        assert server.stop() == 0, server.log()


def test_metrics_need_a_reader_token_with_metrics_auth(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    server = ServerProcess(tmp_path, ["--auth-token-file", str(tokens), "--metrics-auth"],
                           http=True).wait_listening()
    try:
        assert get(server.http_url + "/metrics")[0] == 401
        assert get(server.http_url + "/metrics", "tok-collector")[0] == 403
        status, _, body = get(server.http_url + "/metrics", "tok-reader")
        assert status == 200 and b"tapio_streams_refused_total" in body
        assert get(server.http_url + "/healthz")[0] == 200
    finally:
        assert server.stop() == 0, server.log()
