# cython: boundscheck=False, wraparound=False, cdivision=True
# Secrets out of argv before an event leaves the node, in C (no Python object per event).
#
# Input: arguments back to back, each ended by a NUL (the last may be cut off without one, as
# the kernel's copy leaves it). Output: the same arguments with secret values replaced by "***":
#   --password=v, -token=v, PGPASSWORD=v   key=value whose key has a sensitive word   -> key=***
#   --password v, --token v                 a flag with a sensitive word, then its value -> ***
#   scheme://user:pw@host                   URL userinfo                               -> ://***@
#   Bearer v, Authorization: v              credentials of HTTP headers                -> ***
# A key is sensitive when one of the configured words occurs in it, compared in lower case with
# "_" and "-" alike ("--db-password", "PGPASSWORD" and "MYSQL_PASSWORD" all hold "password").
# Erring this way hides a harmless value now and then ("--tokenizer=x"); the other way leaks.
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy, memchr

from tapio._fast.events cimport (tapio_exec, TAPIO_ARGS_LEN, TAPIO_EXEC_ARGS_TRUNCATED,
                                 TAPIO_EXEC_ARGS_REDACTED)

cdef enum:
    REDACT_MAX_WORDS = 64
    REDACT_WORD_LEN = 32        # a word is at most 31 bytes
    REDACT_MARK_LEN = 3         # "***"


cdef struct redact_config:
    uint32_t n_words
    uint8_t word_len[REDACT_MAX_WORDS]
    char words[REDACT_MAX_WORDS][REDACT_WORD_LEN]   # normalized: lower case, "_" as "-"


cdef inline char norm(char c) noexcept nogil:
    if b'A' <= c <= b'Z':
        return c + 32
    if c == b'_':
        return b'-'
    return c


cdef inline bint key_is_sensitive(const redact_config *cfg, const char *k, size_t n) noexcept nogil:
    """Whether a word of cfg occurs in the key k[0:n] (compared normalized)."""
    cdef uint32_t w
    cdef size_t i, j, wl
    for w in range(cfg.n_words):
        wl = cfg.word_len[w]
        if wl == 0 or wl > n:
            continue
        for i in range(n - wl + 1):
            j = 0
            while j < wl and norm(k[i + j]) == cfg.words[w][j]:
                j += 1
            if j == wl:
                return True
    return False


cdef inline bint ieq(const char *s, size_t n, const char *lit, size_t ln) noexcept nogil:
    """s[0:n] equals the lower-case literal lit[0:ln], ignoring case."""
    cdef size_t i
    if n != ln:
        return False
    for i in range(n):
        if norm(s[i]) != lit[i]:
            return False
    return True


cdef inline size_t ifind(const char *s, size_t n, const char *lit, size_t ln) noexcept nogil:
    """The index of the lower-case literal lit in s[0:n], ignoring case; n when it is not there."""
    cdef size_t i, j
    if ln > n:
        return n
    for i in range(n - ln + 1):
        j = 0
        while j < ln and norm(s[i + j]) == lit[j]:
            j += 1
        if j == ln:
            return i
    return n


cdef struct redact_out:
    char *p          # where the next byte goes
    char *end        # the capacity's end
    bint full        # a byte did not fit


cdef inline void put(redact_out *o, const char *s, size_t n) noexcept nogil:
    if n > <size_t>(o.end - o.p):
        n = <size_t>(o.end - o.p)
        o.full = True
    memcpy(o.p, s, n)
    o.p += n


cdef inline void put_mark(redact_out *o) noexcept nogil:
    put(o, b"***", REDACT_MARK_LEN)


cdef inline bint is_space(char c) noexcept nogil:
    return c == b' ' or c == b'\t' or c == b'\n' or c == b'\r'


cdef inline bint put_userinfo_scrubbed(redact_out *o, const char *s, size_t n) noexcept nogil:
    """A word with the userinfo of every URL in it (scheme://USERINFO@host) replaced; True when
    something was."""
    cdef size_t i = 0, at, j, k
    cdef bint changed = False
    while i < n:
        at = ifind(s + i, n - i, b"://", 3)
        if at == n - i:
            break
        j = i + at + 3
        k = j
        while k < n and s[k] != b'@' and s[k] != b'/' and s[k] != b'?' and s[k] != b'#':
            k += 1
        put(o, s + i, j - i)
        i = j
        if k < n and s[k] == b'@' and k > j:
            put_mark(o)
            changed = True
            i = k
    put(o, s + i, n - i)
    return changed


cdef enum:
    VALUE_NONE = 0
    VALUE_WORD = 1      # the next word is a secret (a flag inside a shell command string)
    VALUE_ARG = 2       # the next argument is a secret (a flag that was a whole argument)


cdef inline size_t redact_args(const redact_config *cfg, const char *src, size_t n, char *dst,
                               size_t cap, bint *changed, bint *cut) noexcept nogil:
    """src[0:n] (arguments, each NUL-ended but maybe the last) into dst[0:cap], with secrets
    replaced; returns the bytes written. *changed: something was replaced; *cut: the result did
    not fit into cap and was cut off (it can grow by a few bytes: "ab" becomes "***").

    Each argument is also read as words (split at white space), so that `sh -c "cmd --token x"`
    is redacted as `cmd --token x` would be. A value that starts an argument runs to the
    argument's end (`--password=a b` as one argument hides `a b`); inside a longer argument it
    runs to the end of its word."""
    cdef redact_out o
    cdef const char *p = src
    cdef const char *end = src + n
    cdef const char *nul
    cdef const char *w
    cdef const char *wend
    cdef const char *aend
    cdef const char *eq
    cdef size_t wl, d, kl
    cdef int value_next = VALUE_NONE
    cdef bint ended, first
    o.p = dst
    o.end = dst + cap
    o.full = False
    changed[0] = False
    while p < end:
        nul = <const char *>memchr(p, 0, <size_t>(end - p))
        aend = nul if nul != NULL else end
        ended = nul != NULL
        w = p
        first = True
        while w < aend:
            while w < aend and is_space(w[0]):
                put(&o, w, 1)
                w += 1
            if w >= aend:
                break
            wend = w
            while wend < aend and not is_space(wend[0]):
                wend += 1
            wl = <size_t>(wend - w)
            d = 0
            while d < wl and w[d] == b'-':
                d += 1
            if value_next != VALUE_NONE and (ieq(w, wl, b"bearer", 6) or ieq(w, wl, b"basic", 5)):
                put(&o, w, wl)                # `Authorization: Bearer x`: x is the secret
            elif value_next != VALUE_NONE and not (wl >= 2 and w[0] == b'-' and w[1] == b'-'):
                if value_next == VALUE_ARG and first:
                    wend = aend               # the whole argument is the value
                put_mark(&o)
                changed[0] = True
                value_next = VALUE_NONE
            else:
                value_next = VALUE_NONE
                eq = <const char *>memchr(w, b'=', wl)
                kl = <size_t>(eq - w) - d if eq != NULL else 0
                if eq != NULL and kl > 0 and key_is_sensitive(cfg, w + d, kl):
                    put(&o, w, <size_t>(eq - w) + 1)
                    if first:
                        wend = aend
                    if eq + 1 < wend:             # an empty value hides nothing
                        put_mark(&o)
                        changed[0] = True
                elif eq == NULL and wl > 1 and w[wl - 1] == b':' and key_is_sensitive(cfg, w + d, wl - 1 - d):
                    put(&o, w, wl)            # a header: `X-Api-Key: v`, `Authorization: v`
                    value_next = VALUE_ARG if wend == aend else VALUE_WORD
                elif eq == NULL and ((d > 0 and key_is_sensitive(cfg, w + d, wl - d))
                                     or ieq(w, wl, b"bearer", 6)):
                    put(&o, w, wl)
                    value_next = VALUE_ARG if (first and wend == aend) else VALUE_WORD
                elif put_userinfo_scrubbed(&o, w, wl):
                    changed[0] = True
            w = wend
            first = False
        if not ended:
            break
        put(&o, b"\0", 1)
        p = nul + 1
        if value_next == VALUE_WORD:
            value_next = VALUE_ARG    # a shell string ended on the flag: its value is what follows
    cut[0] = o.full
    return <size_t>(o.p - dst)


cdef inline int redact_config_add(redact_config *cfg, const char *word, size_t n) noexcept nogil:
    """Add one word (normalized here); -1 when there is no room or it is too long or empty."""
    cdef size_t i
    if n == 0 or n >= REDACT_WORD_LEN or cfg.n_words >= REDACT_MAX_WORDS:
        return -1
    for i in range(n):
        cfg.words[cfg.n_words][i] = norm(word[i])
    cfg.words[cfg.n_words][n] = 0
    cfg.word_len[cfg.n_words] = <uint8_t>n
    cfg.n_words += 1
    return 0


cdef inline void redact_exec(const redact_config *cfg, tapio_exec *x) noexcept nogil:
    """An exec event's argv, redacted in place; marks it (TAPIO_EXEC_ARGS_REDACTED) when
    something was replaced, and as truncated when the result had to be cut to fit args[]."""
    cdef char out[256]      # TAPIO_ARGS_LEN, the size events.pxd gives args[]
    cdef size_t used = x.args_size if x.args_size < TAPIO_ARGS_LEN else TAPIO_ARGS_LEN
    cdef size_t written
    cdef bint changed = False, cut = False
    written = redact_args(cfg, x.args, used, out, TAPIO_ARGS_LEN, &changed, &cut)
    if not changed:
        return
    memcpy(x.args, out, written)
    x.args_size = <uint32_t>written
    x.flags |= TAPIO_EXEC_ARGS_REDACTED
    if cut:
        x.flags |= TAPIO_EXEC_ARGS_TRUNCATED
