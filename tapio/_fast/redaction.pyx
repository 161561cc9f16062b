# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Which argv values are secrets (redact.pxd does the work, in C); the collector's one Redactor.

An EventArena given a Redactor (EventArena.set_redactor) redacts every exec event's argv as it
enters the arena, so that both paths, raw and semantic, and everything built from argv (the
process table's command line) only ever see the redacted form. `redact_argv` serves the few
Python callers (a command line read from /proc, once per process) and the tests.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memset

from tapio._fast.redact cimport (redact_config, redact_config_add, redact_args, REDACT_MAX_WORDS,
                                 REDACT_WORD_LEN)

# Keys holding one of these (case and "_"/"-" aside) have secret values. A --redact-file adds to them.
DEFAULT_WORDS = ("password", "passwd", "passphrase", "secret", "token", "apikey", "api-key",
                 "access-key", "private-key", "credential", "authorization", "auth-key",
                 "session-key", "x-api-key")
MAX_WORDS = REDACT_MAX_WORDS
MAX_WORD_LEN = REDACT_WORD_LEN - 1


def read_words(path):
    """The words of a --redact-file: one per line; blank lines and `#` comments are skipped.
    ValueError says which line is wrong."""
    words = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            word = line.split("#", 1)[0].strip()
            if not word:
                continue
            if len(word.encode()) > MAX_WORD_LEN or any(c.isspace() for c in word) or "=" in word:
                raise ValueError(f"{path}:{number}: {word!r} is not a key word (at most "
                                 f"{MAX_WORD_LEN} bytes, no spaces or '=')")
            words.append(word)
    return words


cdef class Redactor:
    """The sensitive key words (DEFAULT_WORDS plus `extra`), ready for the C redactor."""

    def __cinit__(self, extra=()):
        memset(&self.cfg, 0, sizeof(self.cfg))
        words = []
        for w in (*DEFAULT_WORDS, *extra):
            w = w.lower().replace("_", "-")
            if w not in words:
                words.append(w)
        if len(words) > MAX_WORDS:
            raise ValueError(f"at most {MAX_WORDS} redaction words, not {len(words)}")
        for w in words:
            b = w.encode()
            if redact_config_add(&self.cfg, b, len(b)) < 0:
                raise ValueError(f"{w!r} is not a redaction word (1 to {MAX_WORD_LEN} bytes)")
        self.words = tuple(words)

    def redact_argv(self, bytes argv not None):
        """(argv with secrets replaced, whether any was): arguments NUL-separated as the kernel
        and /proc/PID/cmdline give them."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(argv)
        cdef size_t cap = <size_t>n * 3 + 16      # "x" -> "***": the most it can grow
        cdef char *out = <char *>PyMem_Malloc(cap)
        cdef bint changed = False, cut = False
        cdef size_t written
        cdef const char *src = PyBytes_AS_STRING(argv)
        if out == NULL:
            raise MemoryError()
        try:
            with nogil:
                written = redact_args(&self.cfg, src, <size_t>n, out, cap,
                                      &changed, &cut)
            if not changed:
                return argv, False
            return PyBytes_FromStringAndSize(out, written), True
        finally:
            PyMem_Free(out)
