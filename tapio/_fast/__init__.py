"""The compiled core (Cython over libbpf): kernel events from the ring buffer to the wire and back.

  kernel     the BPF object: open, configure, load, attach, read the ring buffer, close
  arena      EventArena: preallocated slots that kernel records are copied into
  semantic   SemanticProcessor: filter, enrich, collapse and order an arena's events in C
  synthetic  synthetic kernel events written into an arena (benchmarks, hosts without eBPF)
  codec      arena -> protobuf wire bytes (collector) and wire bytes -> C records (server);
             its parts are the .pxi files it includes (see its docstring)
  correlate  Correlator: the correlation engine's per-collector state, fed decoded records
  layout     the event layout as clang (BPF) and the host compiler see it (layout tests)

Declarations shared between them (.pxd): events (bpf/tapio_events.h), records (decoded records),
wire (protobuf varints and bounds-checked reads), utf8 (scrubbing kernel strings), hashmap (a
bounded uint64 map), libbpf (the libbpf calls used).
"""
