"""(c, d) Mutual TLS is mandatory: no client certificate, a foreign CA's certificate, or
plaintext never complete a call; a certificate freshly issued by the platform CA does."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import RPC_TIMEOUT, ZenServer, run_zen

# Codes that say "the server answered the call": seeing one of them on a channel that should
# have been refused means the call got through the TLS layer.
ANSWERED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
}


def health_check(channel: grpc.Channel) -> health_pb2.HealthCheckResponse:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)


def assert_refused(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        with pytest.raises(grpc.RpcError) as info:
            health_check(channel)
    finally:
        channel.close()
    code = info.value.code()
    assert code not in ANSWERED, f"the call reached the server: {code} {info.value.details()}"
    return code


def test_admin_identity_is_accepted(zen: ZenServer):
    channel = zen.channel()
    try:
        assert health_check(channel).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


def test_no_client_certificate_is_refused(zen: ZenServer):
    code = assert_refused(zen.channel(zen.credentials()))
    assert code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.INTERNAL, grpc.StatusCode.PERMISSION_DENIED}


def test_certificate_from_another_ca_is_refused(zen: ZenServer, tmp_path: Path):
    other = tmp_path / "other"
    run_zen("pki", "init", data_dir=other)
    pki = other / "pki"
    if not (pki / "admin.crt").exists():
        run_zen("pki", "issue", "--name", "admin", "--role", "admin", data_dir=other)
    # A well-formed admin identity, trusted by nobody but its own CA; we still trust the
    # real server's CA so the failure can only come from the server refusing us.
    assert (pki / "ca.crt").read_bytes() != (zen.pki / "ca.crt").read_bytes()
    credentials = zen.credentials(pki / "admin.crt", pki / "admin.key")
    assert_refused(zen.channel(credentials))


def test_plaintext_is_refused(zen: ZenServer):
    channel = grpc.insecure_channel(zen.grpc_target, options=[("grpc.enable_http_proxy", 0)])
    assert_refused(channel)


def test_server_certificate_must_match_the_ca(zen: ZenServer, tmp_path: Path):
    """The client side of mTLS: a client trusting another CA refuses the server."""
    other = tmp_path / "other"
    run_zen("pki", "init", data_dir=other)
    credentials = zen.credentials(zen.pki / "admin.crt", zen.pki / "admin.key", ca=other / "pki" / "ca.crt")
    assert_refused(zen.channel(credentials))


def test_issued_service_identity_is_accepted(zen: ZenServer, tmp_path: Path):
    """`zen pki issue` signs with the platform CA; the server accepts the new identity."""
    out = tmp_path / "issued"
    run_zen("pki", "issue", "--name", "conformance-gw", "--role", "service", "--out-dir", str(out),
            data_dir=zen.data_dir)
    credentials = zen.credentials(out / "conformance-gw.crt", out / "conformance-gw.key")
    channel = zen.channel(credentials)
    try:
        assert health_check(channel).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
