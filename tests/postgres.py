"""A real PostgreSQL for the tests: initdb in a temp dir, on a free port of 127.0.0.1, trust auth.

    with postgres_server() as dsn:          # postgresql://postgres@127.0.0.1:PORT/postgres
        ...

    with postgres_instance() as pg:         # the same, with pg.stop() / pg.start() in between
        pg.dsn

The binaries are Debian's (/usr/lib/postgresql/VERSION/bin, package postgresql, which
./build.sh test installs). Without them the tests that need one skip, unless
TAPIO_REQUIRE_SERVERS=1 (set by .ci/run), where they fail: CI must not pass by skipping them.
initdb refuses to run as root, so as root the cluster belongs to the `postgres` user that the
package creates (the temp dir is handed to it); as anyone else it belongs to that user.
"""
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from tests.helpers import free_port

REQUIRE_SERVERS = os.environ.get("TAPIO_REQUIRE_SERVERS") == "1"
START_TIMEOUT = 30.0


def bin_dir():
    """The newest installed PostgreSQL's bin directory, or None."""
    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin")
             if os.path.exists(os.path.join(d, "initdb"))]
    if not found:
        return None
    return max(found, key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)


def require_postgres():
    """The bin directory; skips (fails under TAPIO_REQUIRE_SERVERS=1) when there is none."""
    found = bin_dir()
    why = None
    if found is None:
        why = "no PostgreSQL binaries under /usr/lib/postgresql/*/bin (apt install postgresql)"
    elif os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            why = "running as root and there is no postgres user to run initdb as"
    if why is None:
        return found
    if REQUIRE_SERVERS:
        pytest.fail(f"TAPIO_REQUIRE_SERVERS=1 but {why}")
    pytest.skip(why)


class PostgresInstance:
    """One cluster in a temp dir; start() and stop() may be called again (the data stays)."""

    def __init__(self, settings=None):
        self.bin = require_postgres()
        self.settings = dict(settings or {})
        self.dir = tempfile.mkdtemp(prefix="tapio-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "postgres.log")
        self.port = None
        self.proc = None
        self._as = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        os.chmod(self.dir, 0o700)
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")

    @property
    def dsn(self):
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool, *args):
        done = subprocess.run([os.path.join(self.bin, tool), *args], capture_output=True, text=True,
                              timeout=60, cwd=self.dir, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done

    def start(self):
        """Start on a free port (the same one again after a stop); bounded wait until it answers."""
        if self.proc is not None:
            return self
        for attempt in range(3):        # the free port may be taken between the probe and the bind
            port = self.port or free_port()
            argv = [os.path.join(self.bin, "postgres"), "-D", self.data, "-p", str(port),
                    "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}"]
            for name, value in self.settings.items():
                argv += ["-c", f"{name}={value}"]
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=self.dir, start_new_session=True, **self._as)
            finally:
                log.close()
            self.port = port
            if self._wait_ready():
                return self
            self._kill()
            if self.proc_failed_bind():
                self.port = None
                continue
            break
        raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}")

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            done = subprocess.run([os.path.join(self.bin, "pg_isready"), "-q", "-h", "127.0.0.1",
                                   "-p", str(self.port), "-t", "2"], capture_output=True, timeout=10)
            if done.returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def proc_failed_bind(self):
        return "could not bind" in self.log_tail() or "Address already in use" in self.log_tail()

    def log_tail(self, nbytes=4000):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - nbytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def psql(self, sql):
        """Run SQL with psql as the superuser; its output (unaligned, tuples only)."""
        return self._run("psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                         "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql).stdout

    def stop(self):
        """Fast shutdown (SIGINT), bounded; SIGKILL when it does not stop."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.proc = None

    def remove(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_instance(settings=None):
    """A started PostgresInstance; stopped and removed on exit (also on failure)."""
    pg = PostgresInstance(settings)
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


@contextlib.contextmanager
def postgres_server(settings=None):
    """The DSN of a started PostgreSQL (postgresql://postgres@127.0.0.1:PORT/postgres)."""
    with postgres_instance(settings) as pg:
        yield pg.dsn
