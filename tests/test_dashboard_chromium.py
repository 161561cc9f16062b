"""Headless Chromium (Debian's `chromium`, installed by ./build.sh test) loads the dashboard of a
real tapio-server that a real eBPF tapio-collector streams to. The test makes a crash loop
happen (a program that fails over and over), waits for the server's group, and checks that the
page rendered it into its group list, and, opened, its events and trace id. Screenshots are
saved under the test's temporary directory."""
import re
import shutil
import subprocess
import urllib.parse

import pytest

from tests.helpers import ServerProcess, StreamingCollector, http_json, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# a crash loop within the test's own cgroup: three failed exits of one executable in a minute
CORRELATION = """\
[crash_loop]
threshold = 3
window = "1m"
scopes = ["cgroup"]
"""


@pytest.fixture
def chromium():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: ./build.sh test installs Debian's chromium package")
    return CHROMIUM


def browse(chromium, tmp_path, url, *, screenshot=None, budget_ms=8000, timeout=90):
    """The DOM of `url` after the page ran for `budget_ms` of virtual time (or, with
    `screenshot`, a PNG of it there). Bounded; the browser's profile lives in tmp_path."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--window-size=1400,1000",
            f"--virtual-time-budget={budget_ms}"]
    argv += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    try:
        result = subprocess.run(argv + [url], capture_output=True, timeout=timeout,
                                start_new_session=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {timeout}s on {url}")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    return result.stdout.decode("utf-8", "replace")


def test_dashboard_shows_a_crash_loop_created_here(ebpf, chromium, tmp_path):
    config = tmp_path / "correlation.toml"
    config.write_text(CORRELATION)
    server = ServerProcess(tmp_path, http=True, flags=["--correlation-config", str(config)]).wait_listening()
    collector = StreamingCollector(tmp_path, server.address)
    try:
        collector.wait_log("Connected to Tapio server")
        # a program with a name of its own that fails every time it runs, a few times in a row
        crashy = tmp_path / "tapio-crashy"
        shutil.copy("/bin/false", crashy)
        for _ in range(4):
            assert subprocess.run([str(crashy)]).returncode == 1

        def crash_loop():
            status, body = http_json(server.http_url + "/api/v1/groups?kind=crash_loop")
            return status == 200 and next((g for g in body["groups"] if "tapio-crashy" in g["summary"]), None)
        group = wait_until(crash_loop, 30, interval=0.25, what="the crash-loop group at the server")
        for _ in range(20):            # more events flowing while the page is open
            subprocess.run(["/bin/true"], check=True)

        dom = browse(chromium, tmp_path, server.http_url + "/")
        items = re.findall(r'<li class="group kind-crash_loop[^"]*"[^>]*data-id="([0-9a-f]+)"[^>]*data-kind="crash_loop"', dom)
        assert group["id"] in items, f"the group list has no item for {group['id']}:\n{dom[:5000]}"
        item = dom[dom.index(f'data-id="{group["id"]}"'):]
        item = item[:item.index("</li>")]
        assert "tapio-crashy failed" in item and "crash loop" in item, item
        assert 'id="kpi-collectors">1/1<' in dom                     # the collector, connected
        assert re.search(r'data-collector="[^"]+"', dom)
        assert re.search(r'<div class="rate[^"]*" data-type="exit">', dom)

        # the filtered list, with the group opened: its trace id and events
        opened = server.http_url + "/#" + urllib.parse.urlencode({"kind": "crash_loop", "group": group["id"]})
        dom = browse(chromium, tmp_path, opened)
        drawer = dom[dom.index('id="detail"'):]
        assert 'id="detail" class="detail" hidden' not in dom, "the group drawer did not open"
        assert f"<code>{group['trace_id']}</code>" in drawer
        assert drawer.count("<td>exit</td>") >= 3, drawer[:4000]
        assert 'aria-pressed="true" data-kind="crash_loop"' in dom

        shot = tmp_path / "dashboard.png"
        browse(chromium, tmp_path, server.http_url + "/", screenshot=shot)
        browse(chromium, tmp_path, opened, screenshot=tmp_path / "dashboard-group.png")
        assert shot.stat().st_size > 10_000 and (tmp_path / "dashboard-group.png").exists()
        with open(shot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        collector.stop()
        server.stop()
    print(f"screenshots: {shot} {tmp_path / 'dashboard-group.png'}")


def test_dashboard_signs_in_with_a_token(chromium, tmp_path):
    """A server with tokens: the page asks for one, takes it from #token=, and sends it on its
    requests; a collector token is refused there."""
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-reader reader\ntok-collector collector\n")
    server = ServerProcess(tmp_path, ["--auth-token-file", str(tokens)], http=True).wait_listening()
    try:
        dom = browse(chromium, tmp_path, server.http_url + "/", budget_ms=3000)
        assert '<form id="login" class="login card">' in dom, dom[:3000]      # shown: no hidden
        assert "this server needs a bearer token" in dom
        dom = browse(chromium, tmp_path, server.http_url + "/#token=tok-reader", budget_ms=3000)
        assert '<form id="login" class="login card" hidden="">' in dom, dom[:3000]
        assert re.search(r'id="kpi-events">\d+<', dom), dom[:3000]
        assert re.search(r'<button id="logout"[^>]*>', dom) and 'id="logout" type="button" class="link" hidden' not in dom
        dom = browse(chromium, tmp_path, server.http_url + "/#token=tok-collector", budget_ms=3000)
        assert '<form id="login" class="login card">' in dom
        assert "collector token may not read" in dom
    finally:
        assert server.stop() == 0, server.log()
