"""tapio-collector: kernel events -> batches -> a Tapio server. One module, one job:

  cli               flags and environment -> args; exit code 2 on a bad flag
  app               the process: one trio.run owning source, pump, sink, HTTP, signals, shutdown
  ebpf_source       the kernel as a source: BPF probes, ring buffer read with trio
  synthetic_source  `--source synthetic`: events at a set rate, for benchmarks and demos
  pump              the main loop: source -> arena -> processor -> encoded batches -> sink
  processor         the dual path: raw batches, and semantic ones (filtered, enriched, collapsed)
  enrich/           what enrichment adds (container, pod, unit, process) and its set-up
  ledger            where every event went, each in exactly one count
  connection        the sink that streams: connecting -> streaming -> backing off, acks, failover
  delivery          the unacked-batch buffer, bounded in bytes, with its overflow policy
  spool             `--spool-dir`: unacked batches on disk, recovered after a crash
  grpc_transport    grpcio's blocking StreamEvents call, driven from trio
  channel           gRPC channels: TLS, mutual TLS, bearer token, keepalive
  backoff           exponential backoff with full jitter
  output            the sink that writes JSON lines (`--output`)
  http_app          /healthz, /readyz, /metrics and /api/v1/stats
  clock             kernel boot-time nanoseconds -> wall-clock nanoseconds
"""
