"""Validation rules live in the contracts (`buf.validate` annotations in proto/).

The server checks every request against them in one layer at the gRPC front; this module shows
that a generated client, evaluating the same annotations locally with the Python `protovalidate`
package, refuses exactly what the server refuses (the same fields), and accepts what the server
lets through to its handlers. It also checks that the OpenAPI document publishes the rules.
"""

from __future__ import annotations

import grpc
import protovalidate  # requirements-dev.txt; a missing install fails here, never skips
import pytest
from google.rpc import error_details_pb2, status_pb2

from support import http_session, import_generated, service_stub

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def tenancy():
    (module,) = [m for m in import_generated("zen.tenancy.v1") if hasattr(m, "GetClusterRequest")]
    return module


def webhooks():
    (module,) = [m for m in import_generated("zen.ingest.v1") if hasattr(m, "CreateWebhookSourceRequest")]
    return module


def local_violations(message) -> set[str]:
    """Field paths the client-side validator refuses (empty when the message is valid)."""
    try:
        protovalidate.validate(message)
    except protovalidate.ValidationError as error:
        return {protovalidate_field(v) for v in error.violations}
    return set()


def protovalidate_field(violation) -> str:
    proto = violation.proto
    return ".".join(
        element.field_name + (f"[{element.index}]" if element.HasField("index") else "")
        for element in proto.field.elements
    )


def server_violations(error: grpc.RpcError) -> set[str]:
    """Field paths of the google.rpc.BadRequest in an INVALID_ARGUMENT answer."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert details, "INVALID_ARGUMENT without google.rpc.Status details"
    status = status_pb2.Status.FromString(details)
    fields = set()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.update(v.field for v in bad_request.field_violations)
    return fields


@pytest.fixture(scope="module")
def tenancy_stub(zen):
    with zen.channel() as channel:
        stub, _ = service_stub(channel, "zen.tenancy.v1.TenancyService")
        yield stub


@pytest.fixture(scope="module")
def webhook_stub(zen):
    with zen.channel() as channel:
        stub, _ = service_stub(channel, "zen.ingest.v1.IngestService")
        yield stub


def test_ids_that_are_not_uuids_are_refused_by_the_client_and_the_server_alike(tenancy_stub):
    request = tenancy().GetClusterRequest(tenant_id="not-a-uuid", cluster_id="")
    local = local_violations(request)
    assert local == {"tenant_id", "cluster_id"}, local
    with pytest.raises(grpc.RpcError) as refused:
        tenancy_stub.GetCluster(request, timeout=15)
    assert server_violations(refused.value) == local


def test_nested_rules_and_lengths_are_the_same_on_both_sides(webhook_stub):
    m = webhooks()
    request = m.CreateWebhookSourceRequest(
        tenant_id="00000000-0000-4000-8000-000000000001",
        webhook_source=m.WebhookSource(
            name="Not A DNS Label",
            display_name="x" * 201,
            rate_limit_per_second=-1,
            verification=m.WebhookVerification(scheme=m.WEBHOOK_SCHEME_ZEN_HMAC),
        ),
    )
    local = local_violations(request)
    assert local == {
        "webhook_source.name",
        "webhook_source.display_name",
        "webhook_source.rate_limit_per_second",
    }, local
    with pytest.raises(grpc.RpcError) as refused:
        webhook_stub.CreateWebhookSource(request, timeout=15, metadata=[("x-request-id", "validation-1")])
    assert server_violations(refused.value) == local


def test_a_cross_field_rule_written_in_cel_holds_on_both_sides(webhook_stub):
    m = webhooks()
    request = m.CreateWebhookSourceRequest(
        tenant_id="00000000-0000-4000-8000-000000000001",
        webhook_source=m.WebhookSource(
            name="generic",
            verification=m.WebhookVerification(scheme=m.WEBHOOK_SCHEME_GENERIC_HMAC),
        ),
    )
    local = local_violations(request)
    assert local == {"webhook_source.verification"}, local
    with pytest.raises(grpc.RpcError) as refused:
        webhook_stub.CreateWebhookSource(request, timeout=15, metadata=[("x-request-id", "validation-2")])
    assert server_violations(refused.value) == local


def test_what_the_client_accepts_gets_past_validation(tenancy_stub):
    request = tenancy().GetClusterRequest(
        tenant_id="00000000-0000-4000-8000-000000000001",
        cluster_id="00000000-0000-4000-8000-000000000002",
    )
    assert local_violations(request) == set()
    with pytest.raises(grpc.RpcError) as answered:
        tenancy_stub.GetCluster(request, timeout=15)
    # Valid, so decided on its merits: the operator's certificate is not a tenant member, or
    # the tenant does not exist; never INVALID_ARGUMENT.
    assert answered.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)


def test_the_openapi_document_publishes_the_rules(zen):
    document = http_session().get(f"{zen.http_base}/openapi.json", timeout=15).json()
    operation = document["paths"]["/v1/tenants/{tenant_id}/webhookSources"]["post"]
    tenant_parameter = next(p for p in operation["parameters"] if p.get("name") == "tenant_id")
    assert UUID_PATTERN in str(tenant_parameter["schema"]), tenant_parameter
    header = document["components"]["parameters"]["TenantId"]
    assert header["schema"]["format"] == "uuid" and header["schema"]["pattern"] == UUID_PATTERN
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    text = str(body) + str(document["components"]["schemas"].get("zen.ingest.v1.WebhookSource"))
    assert "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" in text, "the source name's pattern is published"
    assert "'maxLength': 200" in text, "the display name's length is published"
    verification = str(document["components"]["schemas"]["zen.ingest.v1.WebhookVerification"])
    assert "verification.generic_hmac_config" in verification, "CEL rules are described"
