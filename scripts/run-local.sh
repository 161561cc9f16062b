#!/usr/bin/env bash
# `./build.sh run`: tapio-server and tapio-collector on this host, with embedded defaults.
# What they write goes under ./run/; new semantic groups are followed in the terminal;
# Ctrl-C stops everything cleanly. Extra arguments go to tapio-server.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/.venv/bin"
RUN="$ROOT/run"
GRPC_PORT=${TAPIO_GRPC_PORT:-9090}
HTTP_PORT=${TAPIO_HTTP_PORT:-8080}
mkdir -p "$RUN"

if [ "$(id -u)" -ne 0 ]; then
    echo "tapio: the collector loads eBPF programs: run as root (sudo ./build.sh run)" >&2
    exit 2
fi

pids=()
stop() {
    trap - INT TERM
    # the follower first, then the collector (it flushes to the server), then the server
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    echo
    grep -h "events seen" "$RUN/collector.log" | tail -n 1 >&2 || true
    grep -h "Stopped after" "$RUN/server.log" | tail -n 1 >&2 || true
    exit 0
}
trap stop INT TERM

"$BIN/tapio-server" --host 127.0.0.1 --grpc-port "$GRPC_PORT" --http-port "$HTTP_PORT" \
    --enable-reflection --events-out "$RUN/events.jsonl" --db "$RUN/tapio.db" \
    --trace-export "jsonl:$RUN/traces.jsonl" "$@" 2>"$RUN/server.log" &
server=$!
for _ in $(seq 100); do
    grep -q "Tapio server listening" "$RUN/server.log" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { cat "$RUN/server.log" >&2; exit 2; }
    sleep 0.1
done

"$BIN/tapio-collector" --server "127.0.0.1:$GRPC_PORT" --enable-ebpf --http-host 127.0.0.1 \
    2>"$RUN/collector.log" &
collector=$!
pids=("$collector" "$server")

cat <<MSG
Tapio is running on this host.
  dashboard     http://127.0.0.1:$HTTP_PORT/   (API: /api/v1/stats, /api/v1/groups, /metrics)
  gRPC          127.0.0.1:$GRPC_PORT           (grpcurl -plaintext 127.0.0.1:$GRPC_PORT list)
  collector     http://127.0.0.1:9091/api/v1/stats
  files         $RUN/events.jsonl (every event), $RUN/traces.jsonl (traces), $RUN/tapio.db (groups)
  logs          $RUN/server.log, $RUN/collector.log
New semantic groups follow (Ctrl-C stops everything):
MSG

"$BIN/tapio-server" groups --follow --server "127.0.0.1:$GRPC_PORT" &
pids=($! "${pids[@]}")
wait "$collector" || true
stop
