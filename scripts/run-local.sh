#!/usr/bin/env bash
# `./build.sh run`: tapio-server and tapio-collector on this host, with embedded defaults.
# What they write goes under ./run/ (TAPIO_RUN_DIR); new semantic groups are followed in the
# terminal; Ctrl-C stops everything cleanly. Extra arguments go to tapio-server; the collector
# takes its flags from the environment (TAPIO_CORRELATION=raw, ...).
#
# The server must outlive its collector: a collector's last batches are acked only while the
# server runs. So both run in sessions of their own, where the terminal's Ctrl-C (SIGINT to
# the foreground process group) does not reach them; this script stops the collector first,
# waits for it to flush and exit, and only then stops the server.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/.venv/bin"
RUN=${TAPIO_RUN_DIR:-$ROOT/run}
GRPC_PORT=${TAPIO_GRPC_PORT:-9090}
HTTP_PORT=${TAPIO_HTTP_PORT:-8080}
COLLECTOR_HTTP_PORT=${TAPIO_COLLECTOR_HTTP_PORT:-9091}
# the collector leaves within its shutdown timeout; the server within its grace period
COLLECTOR_WAIT=${TAPIO_COLLECTOR_STOP_WAIT:-20}
SERVER_WAIT=${TAPIO_SERVER_STOP_WAIT:-30}
mkdir -p "$RUN"

if [ "$(id -u)" -ne 0 ]; then
    echo "tapio: the collector loads eBPF programs: run as root (sudo ./build.sh run)" >&2
    exit 2
fi

server="" collector="" follower=""

# stop_and_wait PID SECONDS: SIGTERM once, wait (bounded), then SIGKILL
stop_and_wait() {
    local pid=$1 limit=$2 i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < limit * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "tapio: pid $pid still running after ${limit}s: killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

stop() {
    trap '' INT TERM HUP       # a second Ctrl-C must not cut the collector's flush short
    stop_and_wait "$follower" 5
    stop_and_wait "$collector" "$COLLECTOR_WAIT"
    stop_and_wait "$server" "$SERVER_WAIT"
    echo
    grep -h "events seen" "$RUN/collector.log" | tail -n 1 >&2 || true
    grep -h "Stopped after" "$RUN/server.log" | tail -n 1 >&2 || true
    exit 0
}
trap stop INT TERM HUP

setsid "$BIN/tapio-server" --host 127.0.0.1 --grpc-port "$GRPC_PORT" --http-port "$HTTP_PORT" \
    --enable-reflection --events-out "$RUN/events.jsonl" --db "$RUN/tapio.db" \
    --trace-export "jsonl:$RUN/traces.jsonl" "$@" </dev/null 2>"$RUN/server.log" &
server=$!
for _ in $(seq 100); do
    grep -q "Tapio server listening" "$RUN/server.log" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { cat "$RUN/server.log" >&2; exit 2; }
    sleep 0.1
done

setsid "$BIN/tapio-collector" --server "127.0.0.1:$GRPC_PORT" --enable-ebpf --http-host 127.0.0.1 \
    --http-port "$COLLECTOR_HTTP_PORT" </dev/null 2>"$RUN/collector.log" &
collector=$!

cat <<MSG
Tapio is running on this host.
  dashboard     http://127.0.0.1:$HTTP_PORT/   (API: /api/v1/stats, /api/v1/groups, /metrics)
  gRPC          127.0.0.1:$GRPC_PORT           (grpcurl -plaintext 127.0.0.1:$GRPC_PORT list)
  collector     http://127.0.0.1:$COLLECTOR_HTTP_PORT/api/v1/stats
  files         $RUN/events.jsonl (every event), $RUN/traces.jsonl (traces), $RUN/tapio.db (groups)
  logs          $RUN/server.log, $RUN/collector.log
New semantic groups follow (Ctrl-C stops everything):
MSG

"$BIN/tapio-server" groups --follow --server "127.0.0.1:$GRPC_PORT" &
follower=$!
wait "$collector" || true
collector=""
stop
