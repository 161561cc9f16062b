#!/usr/bin/env bash
# `./build.sh run`: tapio-server and tapio-collector on this host, with embedded defaults.
# Everything they write goes under ./run/ ; Ctrl-C stops both cleanly.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/.venv/bin"
RUN="$ROOT/run"
GRPC_PORT=${TAPIO_GRPC_PORT:-9090}
mkdir -p "$RUN"

if [ "$(id -u)" -ne 0 ]; then
    echo "tapio: the collector loads eBPF programs: run as root (sudo ./build.sh run)" >&2
    exit 2
fi

"$BIN/tapio-server" --host 127.0.0.1 --grpc-port "$GRPC_PORT" --enable-reflection \
    --events-out "$RUN/events.jsonl" "$@" 2>"$RUN/server.log" &
server=$!
"$BIN/tapio-collector" --server "127.0.0.1:$GRPC_PORT" --enable-ebpf 2>"$RUN/collector.log" &
collector=$!

stop() {
    trap - INT TERM
    kill -TERM "$collector" 2>/dev/null || true
    wait "$collector" 2>/dev/null || true
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    echo
    tail -n 1 "$RUN/collector.log" >&2 || true
    tail -n 1 "$RUN/server.log" >&2 || true
    exit 0
}
trap stop INT TERM

cat <<MSG
Tapio is running on this host.
  gRPC server   127.0.0.1:$GRPC_PORT   (grpcurl -plaintext 127.0.0.1:$GRPC_PORT list)
  events        $RUN/events.jsonl
  logs          $RUN/server.log, $RUN/collector.log
Following new events (Ctrl-C stops both):
MSG
tail -n 0 -F "$RUN/events.jsonl" 2>/dev/null &
tailer=$!
trap 'kill $tailer 2>/dev/null; stop' INT TERM
wait "$collector"
kill "$tailer" 2>/dev/null || true
stop
