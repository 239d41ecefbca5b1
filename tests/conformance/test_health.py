"""(a) The admin identity sees every Zen service SERVING on the standard gRPC health service."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import RPC_TIMEOUT, ZEN_SERVICES


def wait_serving(channel: grpc.Channel, service: str, within: float = 15.0) -> int:
    """Polls Health.Check until SERVING (the status follows a background readiness check)."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + within
    status = None
    while True:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        status = response.status
        if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


@pytest.mark.parametrize("service", ["", *ZEN_SERVICES])
def test_service_is_serving(admin_channel, service):
    status = wait_serving(admin_channel, service)
    assert status == health_pb2.HealthCheckResponse.SERVING, (
        f"health of {service!r} is {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
    )


def test_unknown_service_is_not_found(admin_channel):
    stub = health_pb2_grpc.HealthStub(admin_channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="zen.nosuch.v1.NoSuchService"), timeout=RPC_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_streams_serving(admin_channel):
    wait_serving(admin_channel, "")
    stub = health_pb2_grpc.HealthStub(admin_channel)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
    try:
        first = next(stream)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stream.cancel()
