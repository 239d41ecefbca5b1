"""(b) Server reflection (v1alpha, which grpcio-reflection speaks, and v1) lists the contract."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from support import HEALTH_SERVICE, RPC_TIMEOUT, ZEN_SERVICES


def test_v1alpha_lists_zen_services_and_health(admin_channel):
    database = ProtoReflectionDescriptorDatabase(admin_channel)
    services = set(database.get_services())
    missing = {*ZEN_SERVICES, HEALTH_SERVICE} - services
    assert not missing, f"reflection lacks {sorted(missing)}; it lists {sorted(services)}"


def test_v1alpha_resolves_a_zen_service_descriptor(admin_channel):
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(admin_channel))
    tenancy = pool.FindServiceByName("zen.tenancy.v1.TenancyService")
    assert "ListTenants" in tenancy.methods_by_name
    # Dependencies (zen.common.v1, google.api annotations) resolve through reflection too.
    assert pool.FindEnumTypeByName("zen.common.v1.ContractVersion").values_by_name["CONTRACT_VERSION_V1"].number == 1


def reflect(channel: grpc.Channel, method: str, request: reflection_pb2.ServerReflectionRequest):
    """One request on the bidi ServerReflectionInfo stream of `method`.

    v1 and v1alpha messages are identical on the wire, so the v1alpha classes serve for both.
    """
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = call(iter([request]), timeout=RPC_TIMEOUT)
    return next(responses)


def test_v1_lists_zen_services_and_health(admin_channel):
    response = reflect(
        admin_channel,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        reflection_pb2.ServerReflectionRequest(list_services=""),
    )
    assert response.WhichOneof("message_response") == "list_services_response", response
    services = {s.name for s in response.list_services_response.service}
    missing = {*ZEN_SERVICES, HEALTH_SERVICE} - services
    assert not missing, f"v1 reflection lacks {sorted(missing)}; it lists {sorted(services)}"


def test_v1_serves_file_containing_symbol(admin_channel):
    response = reflect(
        admin_channel,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="zen.tenancy.v1.TenancyService"),
    )
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    assert response.file_descriptor_response.file_descriptor_proto
