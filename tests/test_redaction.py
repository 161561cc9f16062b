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
