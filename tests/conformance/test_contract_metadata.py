"""(e) Request metadata, through the buf-generated Python stubs: `x-zen-contract-version`
(unknown -> INVALID_ARGUMENT naming the supported versions) and `x-request-id` (echoed, or
generated when absent)."""

from __future__ import annotations

import uuid

import grpc
import pytest

from support import RPC_TIMEOUT, ZEN_SERVICES, message_class, response_metadata, service_stub

TENANCY = "zen.tenancy.v1.TenancyService"


def list_tenants(channel, metadata):
    """Calls TenancyService.ListTenants with an empty request; returns (code, details, call)."""
    stub, service = service_stub(channel, TENANCY)
    request = message_class(service.methods_by_name["ListTenants"].input_type)()
    try:
        _, call = stub.ListTenants.with_call(request, metadata=metadata, timeout=RPC_TIMEOUT)
        return grpc.StatusCode.OK, "", call
    except grpc.RpcError as error:
        return error.code(), error.details() or "", error


def status_details_text(call) -> str:
    """The google.rpc.Status details (grpc-status-details-bin), decoded where possible."""
    raw = response_metadata(call).get("grpc-status-details-bin")
    if not raw:
        return ""
    try:
        from google.rpc import error_details_pb2, status_pb2

        status = status_pb2.Status.FromString(raw)
        parts = [status.message]
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                parts += [info.reason, info.domain, *(f"{k}={v}" for k, v in info.metadata.items())]
        return " ".join(parts)
    except Exception:  # noqa: BLE001 - undecodable details are still searched as bytes
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def test_unknown_contract_version_is_invalid_argument(admin_channel):
    code, details, call = list_tenants(admin_channel, [("x-zen-contract-version", "v0")])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code}: {details}"
    assert "v1" in details or "v1" in status_details_text(call), (
        f"the error should name the supported versions: {details!r}"
    )


@pytest.mark.parametrize("metadata", [[("x-zen-contract-version", "v1")], []], ids=["v1", "absent"])
def test_supported_or_absent_version_is_accepted(admin_channel, metadata):
    code, details, _ = list_tenants(admin_channel, metadata)
    assert code != grpc.StatusCode.INVALID_ARGUMENT, f"{code}: {details}"


def methods_to_check():
    """The first method of each call kind (unary, server/client/bidi streaming) of every service."""
    from support import GEN_PYTHON

    if not GEN_PYTHON.is_dir():  # reported by the test itself, not at collection
        return [(service, 0, "first") for service in ZEN_SERVICES]
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        picked = []
        for service in ZEN_SERVICES:
            _, descriptor = service_stub(channel, service)
            kinds = {}
            for index, method in enumerate(descriptor.methods):
                kinds.setdefault((method.client_streaming, method.server_streaming), (index, method.name))
            picked += [(service, index, name) for index, name in sorted(kinds.values())]
        return picked
    finally:
        channel.close()


VERSION_CHECKED = methods_to_check()


@pytest.mark.parametrize(("service", "index"), [(s, i) for s, i, _ in VERSION_CHECKED],
                         ids=[f"{s.rsplit('.', 1)[1]}.{n}" for s, _, n in VERSION_CHECKED])
def test_every_service_rejects_an_unknown_version(admin_channel, service, index):
    _, descriptor = service_stub(admin_channel, service)
    method = descriptor.methods[index]
    request_class = message_class(method.input_type)
    response_class = message_class(method.output_type)
    path = f"/{descriptor.full_name}/{method.name}"
    kind = (method.client_streaming, method.server_streaming)
    metadata = [("x-zen-contract-version", "v999"), ("x-request-id", f"conf-{uuid.uuid4()}")]
    with pytest.raises(grpc.RpcError) as info:
        if kind == (False, False):
            admin_channel.unary_unary(path, request_serializer=request_class.SerializeToString,
                                      response_deserializer=response_class.FromString)(
                request_class(), metadata=metadata, timeout=RPC_TIMEOUT)
        elif kind == (False, True):
            list(admin_channel.unary_stream(path, request_serializer=request_class.SerializeToString,
                                            response_deserializer=response_class.FromString)(
                request_class(), metadata=metadata, timeout=RPC_TIMEOUT))
        elif kind == (True, False):
            admin_channel.stream_unary(path, request_serializer=request_class.SerializeToString,
                                       response_deserializer=response_class.FromString)(
                iter([]), metadata=metadata, timeout=RPC_TIMEOUT)
        else:
            list(admin_channel.stream_stream(path, request_serializer=request_class.SerializeToString,
                                             response_deserializer=response_class.FromString)(
                iter([]), metadata=metadata, timeout=RPC_TIMEOUT))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        f"{path}: {info.value.code()} {info.value.details()}"
    )


def test_request_id_is_echoed(admin_channel):
    request_id = f"conformance-{uuid.uuid4()}"
    _, _, call = list_tenants(admin_channel, [("x-zen-contract-version", "v1"), ("x-request-id", request_id)])
    assert response_metadata(call).get("x-request-id") == request_id


def test_request_id_is_echoed_on_errors(admin_channel):
    request_id = f"conformance-{uuid.uuid4()}"
    code, _, call = list_tenants(admin_channel, [("x-zen-contract-version", "v0"), ("x-request-id", request_id)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert response_metadata(call).get("x-request-id") == request_id


def test_request_id_is_generated_when_absent(admin_channel):
    _, _, call = list_tenants(admin_channel, [])
    generated = response_metadata(call).get("x-request-id")
    assert generated, f"no x-request-id in the response metadata: {response_metadata(call)}"


def test_malformed_request_id_is_invalid_argument(admin_channel):
    code, details, _ = list_tenants(admin_channel, [("x-request-id", "has spaces and / slashes")])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code}: {details}"


@pytest.mark.parametrize("metadata", [[("x-zen-contract-version", "v1")], []], ids=["v1", "absent"])
def test_contract_version_used_is_echoed(admin_channel, metadata):
    _, _, call = list_tenants(admin_channel, metadata)
    assert response_metadata(call).get("x-zen-contract-version") == "v1"
