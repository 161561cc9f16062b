"""The wire end to end: real tapio-server and tapio-collector processes on 127.0.0.1, real kernel
events, and an independent gRPC implementation (grpc-js) as a second client."""
import json
import os
import shutil
import subprocess
import uuid

import grpc
import pytest

from tests.helpers import ServerProcess, StreamingCollector, require_ebpf

INTEROP = os.path.join(os.path.dirname(__file__), "interop")


@pytest.fixture
def server(tmp_path):
    proc = ServerProcess(tmp_path).wait_listening()
    yield proc
    assert proc.stop() == 0, proc.log()


def test_a_real_exec_arrives_at_the_server(server, tmp_path):
    require_ebpf()
    collector = StreamingCollector(tmp_path, server.address)
    try:
        collector.wait_log(f"Connected to Tapio server at {server.address}")
        name = f"tapio-wire-{uuid.uuid4().hex[:8]}"
        script = tmp_path / name
        script.write_text("#!/bin/sh\nexit 5\n")
        script.chmod(0o755)
        child = subprocess.Popen([str(script)])
        assert child.wait(10) == 5
        exec_ = server.wait_for(lambda e: e["type"] == "exec" and e["exec"]["filename"] == str(script),
                                what=f"the exec of {name}")[0]
        assert exec_["pid"] == child.pid
        assert exec_["id"].startswith("ebpf-")
        exit_ = server.wait_for(lambda e: e["type"] == "exit" and e["pid"] == child.pid,
                                what=f"the exit of {name}")[0]
        assert exit_["exit"]["exit_code"] == 5
        assert "Collector" in server.log() and "connected from" in server.log()
    finally:
        assert collector.stop() == 0, collector.log()
    summary = collector.log().strip().splitlines()[-1]
    assert "delivered" in summary, summary


def test_health_and_reflection(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    proc = ServerProcess(tmp_path, ["--enable-reflection"]).wait_listening()
    try:
        with grpc.insecure_channel(proc.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service="tapio.v1.TapioService"), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
            assert "tapio.v1.TapioService" in services
            assert "grpc.health.v1.Health" in services
    finally:
        assert proc.stop() == 0, proc.log()


def _raw_stream(address, messages, metadata=None):
    """Send raw request bytes on StreamEvents; returns (responses, error code or None)."""
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        call = channel.stream_stream("/tapio.v1.TapioService/StreamEvents")(iter(messages), metadata=metadata, timeout=10)
        responses = []
        try:
            for r in call:
                responses.append(r)
        except grpc.RpcError as e:
            return responses, e.code()
        return responses, None


def test_malformed_message_ends_only_that_stream(server):
    _, code = _raw_stream(server.address, [b"\x12\xff\xff\xff\x0f\x01"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # the server keeps serving other streams
    from tapio.v1 import stream_pb2
    hello = stream_pb2.TapioStreamEventsRequest(hello=stream_pb2.Hello(collector_id="after")).SerializeToString()
    batch = stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(batch_id=7, collector_id="after")).SerializeToString()
    responses, code = _raw_stream(server.address, [hello, batch])
    assert code is None
    acks = [stream_pb2.TapioStreamEventsResponse.FromString(r).ack for r in responses]
    assert [a.batch_id for a in acks] == [7]


def test_oversized_message_is_resource_exhausted(tmp_path):
    proc = ServerProcess(tmp_path, ["--max-message-size", "64KiB"]).wait_listening()
    try:
        _, code = _raw_stream(proc.address, [b"\x0a" + b"\x80\x80\x04" + b"x" * (1 << 16)])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def node():
    node = shutil.which("node")
    if node is None or not os.path.isdir(os.path.join(INTEROP, "node_modules", "@grpc", "grpc-js")):
        pytest.fail("node and tests/interop/node_modules are needed: ./build.sh test installs them")
    return node


def grpcjs(node, address, mode):
    out = subprocess.run([node, os.path.join(INTEROP, "client.js"), address, mode],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_grpcjs_client_streams_a_batch_and_gets_its_ack(server, node):
    result = grpcjs(node, server.address, "batch")
    assert result["acks"] == [{"batch_id": "42", "status": "STATUS_OK", "events_accepted": 1}]
    event = server.wait_for(lambda e: e["comm"] == "interop")[0]
    assert event["exec"]["args"] == ["interop", "--flag"]
    assert event["pid"] == 4242


def test_grpcjs_garbage_gets_invalid_argument(server, node):
    result = grpcjs(node, server.address, "garbage")
    assert result["error"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_grpcjs_health_check_is_serving(server, node):
    assert grpcjs(node, server.address, "health") == {"status": "SERVING"}
