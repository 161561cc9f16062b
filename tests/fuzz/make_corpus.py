"""Write the seed corpus of each fuzz target (tests/fuzz/corpus/TARGET/*), from the protobuf
library: python -m tests.fuzz.make_corpus. The files are committed; rerun after a contract change."""
import hashlib
import os

from tapio.v1 import events_pb2, query_pb2, stream_pb2

HERE = os.path.dirname(os.path.abspath(__file__))


def decoder_seeds():
    ctx = events_pb2.Context(container_id="0123abcd", pod_name="web-1", namespace="default",
                             labels=[events_pb2.Label(key="app", value="web")])
    proc = events_pb2.Process(executable="/bin/sh", command_line="sh -c true", ancestors=[1, 7],
                              start_time_ns=5)
    events = [
        events_pb2.Event(id="ebpf-1", type=1, timestamp_ns=1, pid=7, comm="sh", context=ctx,
                         process=proc, exec=events_pb2.ExecDetails(
                             filename="/bin/sh", args=["sh", "-c", "true"], args_count=3)),
        events_pb2.Event(id="ebpf-2", type=2, pid=7, exit=events_pb2.ExitDetails(exit_code=1)),
        events_pb2.Event(id="ebpf-3", type=3, pid=8, count=3, tcp_connect=events_pb2.TcpDetails(
            family=2, saddr=b"\x7f\0\0\x01", daddr=b"\x7f\0\0\x01", sport=4000, dport=80),
            collapsed=events_pb2.Collapsed(first_timestamp_ns=1, last_timestamp_ns=9)),
        events_pb2.Event(id="ebpf-4", type=6, oom_kill=events_pb2.OomKillDetails(trigger_pid=9)),
        events_pb2.Event(id="ebpf-5", type=7, signal=events_pb2.SignalDetails(signal=11)),
    ]
    Req = stream_pb2.TapioStreamEventsRequest
    batch = stream_pb2.EventBatch(batch_id=1, collector_id="node-a", events=events, path=2,
                                  node_name="node", first_seq=1, last_seq=5,
                                  ledger=stream_pb2.Ledger(seen=5))
    yield Req(batch=batch).SerializeToString()
    yield Req(event=events[0]).SerializeToString()
    yield Req(hello=stream_pb2.Hello(collector_id="node-a", event_types=[1, 2])).SerializeToString()
    yield Req(control=stream_pb2.StreamControl(action=1, reason="x")).SerializeToString()
    # an event whose Context occurs again and again (protobuf merges them)
    one = Req(event=events[0]).SerializeToString()
    yield one + Req(event=events_pb2.Event(context=events_pb2.Context())).SerializeToString() * 8


def response_seeds():
    Resp = stream_pb2.TapioStreamEventsResponse
    yield Resp(ack=stream_pb2.EventAck(batch_id=1, status=1, events_accepted=5)).SerializeToString()
    yield Resp(ack=stream_pb2.EventAck(batch_id=2, status=2)).SerializeToString()
    for action in (1, 2, 4):
        yield Resp(control=stream_pb2.StreamControl(action=action, reason="busy")).SerializeToString()
    yield Resp(control=stream_pb2.StreamControl(action=3, max_batch_size=100,
                                                flush_interval_ms=50)).SerializeToString()
    yield Resp(error=stream_pb2.StreamError(code=3, message="bad")).SerializeToString()


def filters_seeds():
    F = query_pb2.Filter
    yield query_pb2.SubscribeRequest(allow_list=[F(event_types=[1], comm_regex="^sh$")]).SerializeToString()
    yield query_pb2.SubscribeRequest(
        allow_list=[F(binary_regex="/bin/.*", pods=["web-.*"], namespaces=["default"])],
        deny_list=[F(pids=[1, 2], containers=["0123"])], events=True).SerializeToString()
    yield query_pb2.SubscribeRequest(allow_list=[F(group_kinds=["crash_loop"], collector_ids=["node-a"])],
                                     groups=True, backfill=10).SerializeToString()


def main():
    for target, seeds in (("decoder", decoder_seeds), ("response", response_seeds),
                          ("filters", filters_seeds)):
        out = os.path.join(HERE, "corpus", target)
        os.makedirs(out, exist_ok=True)
        for data in seeds():
            name = hashlib.sha1(data).hexdigest()[:16]
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
