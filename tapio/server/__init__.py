"""tapio-server: collectors' event streams in, semantic groups and queries out.

cli.py          the command line: flags, and `tapio-server events|groups` (follow.py)
app.py          the process: one trio.run wires the parts below and drains them on SIGTERM
grpc_server.py  the grpcio server: StreamEvents, TapioQuery, health, reflection
service.py      TapioService.StreamEvents: bytes in (the compiled codec decodes), acks out
auth.py         bearer tokens for the gRPC calls, reloaded on SIGHUP
ingest.py       the engine thread: dedupe, count and archive batches, feed consumers, then ack
correlation/    the correlation engine: events of one collector -> semantic groups
otel.py         closed groups as OpenTelemetry traces
store/          what the server keeps: groups (SQLite), recent events (bytes), subscriptions
filters.py      the filter language (allow/deny Matches) of the store, Subscribe and follow.py
subscribe.py    TapioQuery: Subscribe, ListGroups, GetGroup, ListEvents read from the store
follow.py       a TapioQuery client: `tapio-server events|groups [--follow]` in a terminal
http_app.py     HTTP: health, readiness, Prometheus metrics, the JSON API, the dashboard
dashboard/      the live dashboard's static files (no build step)
"""
