"""Redaction of secrets in argv (tapio/_fast/redact.pxd), case by case: what is hidden, what is
left alone, and the words a --redact-file adds."""
import pytest

from tapio._fast.redaction import DEFAULT_WORDS, Redactor, read_words

CASES = [
    # (argv, argv after redaction)
    (["sh", "-c", "true", "--password=hunter2"], ["sh", "-c", "true", "--password=***"]),
    (["sh", "-c", "true", "--token", "ghp_xxx"], ["sh", "-c", "true", "--token", "***"]),
    (["sh", "-c", "true", "https://admin:pw@host/"], ["sh", "-c", "true", "https://***@host/"]),
    (["git", "clone", "https://ghp_tok@github.com/x/y"], ["git", "clone", "https://***@github.com/x/y"]),
    (["curl", "-H", "Authorization: Bearer abc.def", "https://x/"],
     ["curl", "-H", "Authorization: Bearer ***", "https://x/"]),
    (["curl", "-H", "Authorization: Basic dXNlcjpwdw=="], ["curl", "-H", "Authorization: Basic ***"]),
    (["curl", "-H", "Authorization:", "Bearer", "abc"], ["curl", "-H", "Authorization:", "Bearer", "***"]),
    (["curl", "-H", "X-Api-Key: k123"], ["curl", "-H", "X-Api-Key: ***"]),
    (["grpcurl", "-H", "bearer abc", "x"], ["grpcurl", "-H", "bearer ***", "x"]),
    (["env", "PGPASSWORD=x y", "MYSQL_PASSWORD=z", "psql"], ["env", "PGPASSWORD=***", "MYSQL_PASSWORD=***", "psql"]),
    (["tool", "-secret=s", "--Api_Key", "k", "--client-secret", "c"],
     ["tool", "-secret=***", "--Api_Key", "***", "--client-secret", "***"]),
    (["tool", "--password", "a b c"], ["tool", "--password", "***"]),
    (["tool", "--password=a b c"], ["tool", "--password=***"]),
    (["sh", "-c", "mysql --password hunter2 -h db && curl https://u:p@h/x?a=b"],
     ["sh", "-c", "mysql --password *** -h db && curl https://***@h/x?a=b"]),
    (["sh", "-c", "app --token=abc --verbose"], ["sh", "-c", "app --token=*** --verbose"]),
    (["tool", "--token", "--verbose", "--secret", "s"], ["tool", "--token", "--verbose", "--secret", "***"]),
]
UNTOUCHED = [
    ["ls", "-la", "/tmp"],
    ["git", "clone", "https://github.com/x/y"],
    ["kubectl", "get", "pods", "-n", "kube-system", "-o", "wide"],
    ["python3", "-m", "gunicorn", "app.wsgi:application", "-w", "4"],
    ["tool", "--api-key=", "--token"],         # nothing to hide
    ["tool", "--token", "--verbose"],          # a flag after a flag is not its value
    ["ssh", "user@host"],
]


def nul(argv):
    return b"".join(a.encode() + b"\0" for a in argv)


@pytest.mark.parametrize("argv,expected", CASES)
def test_secrets_are_replaced(argv, expected):
    out, changed = Redactor().redact_argv(nul(argv))
    assert changed
    assert out == nul(expected)


@pytest.mark.parametrize("argv", UNTOUCHED)
def test_other_arguments_are_left_alone(argv):
    assert Redactor().redact_argv(nul(argv)) == (nul(argv), False)


def test_last_argument_cut_off_by_the_kernel_copy():
    # the kernel's 256-byte copy may end inside an argument: no NUL after it
    assert Redactor().redact_argv(b"x\0--password=abc") == (b"x\0--password=***", True)
    assert Redactor().redact_argv(b"x\0--token\0ab") == (b"x\0--token\0***", True)


def test_words_from_a_redact_file(tmp_path):
    path = tmp_path / "redact"
    path.write_text("# site-specific keys\nvault_role_id\n\n  license-key  # the vendor's\n")
    words = read_words(path)
    assert words == ["vault_role_id", "license-key"]
    r = Redactor(words)
    assert set(DEFAULT_WORDS) <= set(r.words)
    assert r.redact_argv(nul(["app", "--vault-role-id", "r1", "LICENSE_KEY=l"])) == \
        (nul(["app", "--vault-role-id", "***", "LICENSE_KEY=***"]), True)
    assert Redactor().redact_argv(nul(["app", "--vault-role-id", "r1"]))[1] is False


def test_bad_redact_file_lines_are_named(tmp_path):
    path = tmp_path / "redact"
    path.write_text("ok\nnot a word\n")
    with pytest.raises(ValueError, match=r"redact:2: 'not a word'"):
        read_words(path)


# ---- through a real collector, with real processes ----

import json  # noqa: E402
import subprocess  # noqa: E402
import uuid  # noqa: E402

from tests.helpers import CollectorProcess, wait_until  # noqa: E402

SECRETS = {
    "password": (["--password=hunter2"], "hunter2"),
    "token": (["--token", "ghp_xxxSECRETxxx"], "ghp_xxxSECRETxxx"),
    "url": (["https://admin:pw0rdSECRET@host/"], "pw0rdSECRET"),
}


def _run_secret_commands(tag):
    for args, _ in SECRETS.values():
        subprocess.run(["sh", "-c", "true", tag, *args], check=True, timeout=10)


def _tagged_lines(collector, tag):
    try:
        with open(collector.output, "rb") as f:
            return [line for line in f.read().decode().splitlines() if tag in line]
    except FileNotFoundError:
        return []


def _start(tmp_path, name, flags):
    proc = CollectorProcess(tmp_path / f"{name}.jsonl", flags)
    proc.wait_attached()
    return proc


@pytest.mark.parametrize("path", ["raw", "semantic"])
def test_secrets_never_leave_the_collector(ebpf, tmp_path, path):
    tag = f"tag-{uuid.uuid4().hex[:12]}"
    collector = _start(tmp_path, path, ["--correlation", path, "--flush-interval", "50ms"])
    try:
        def all_seen():
            _run_secret_commands(tag)
            lines = _tagged_lines(collector, tag)
            execs = [json.loads(line) for line in lines if json.loads(line).get("type") == "exec"]
            return execs if len(execs) >= len(SECRETS) else None
        execs = wait_until(all_seen, timeout=30, interval=0.3, what=f"the tagged execs ({path} path)")
        text = "\n".join(_tagged_lines(collector, tag))
    finally:
        collector.stop()
    for _, secret in SECRETS.values():
        assert secret not in text, f"{secret} left the node on the {path} path"
    assert "--password=***" in text and "https://***@host/" in text
    for e in execs:
        assert e["exec"]["args_redacted"] is True, e
        assert tag in e["exec"]["args"]
        if path == "semantic" and e.get("process", {}).get("command_line"):
            assert "***" in e["process"]["command_line"], e["process"]


def test_no_redact_sends_argv_as_it_is(ebpf, tmp_path):
    tag = f"tag-{uuid.uuid4().hex[:12]}"
    collector = _start(tmp_path, "plain", ["--correlation", "raw", "--flush-interval", "50ms", "--no-redact"])
    try:
        def seen():
            _run_secret_commands(tag)
            return "hunter2" in "\n".join(_tagged_lines(collector, tag))
        wait_until(seen, timeout=30, interval=0.3, what="the secret with --no-redact")
        assert "Redaction is off" in collector.log()
    finally:
        collector.stop()


def test_command_line_read_from_proc_is_redacted():
    from tapio.collector.enrich.proc import read_process
    proc = subprocess.Popen(["sh", "-c", "sleep 30", "x", "--api-key", "k3yS3CRET"])
    try:
        def exec_done():     # until then /proc shows the forking Python's command line
            facts = read_process(proc.pid, redactor=Redactor())
            return facts if facts and "--api-key" in facts["command_line"] else None
        facts = wait_until(exec_done, timeout=10, what="the exec of sh")
        assert "k3yS3CRET" not in facts["command_line"]
        assert facts["command_line"].endswith("--api-key ***")
        assert "k3yS3CRET" in read_process(proc.pid)["command_line"]   # without a redactor
    finally:
        proc.kill()
        proc.wait(5)
