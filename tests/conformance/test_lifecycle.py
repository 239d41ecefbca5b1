"""Process lifecycle of `zen serve`, on servers of the tests' own: SIGTERM drains and exits 0,
the data dir (PKI, SQLite) is reusable, and the PostgreSQL backend serves the same way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import RPC_TIMEOUT, ZenServer, http_session, run_zen


def test_sigterm_exits_zero_and_data_dir_is_reusable(tmp_path):
    data_dir = tmp_path / "data"
    server = ZenServer(data_dir=data_dir).start()
    try:
        for name in ("ca.crt", "ca.key", "server.crt", "server.key", "admin.crt", "admin.key"):
            assert (data_dir / "pki" / name).is_file(), f"first start did not create pki/{name}"
        channel = server.channel()
        try:
            health = health_pb2_grpc.HealthStub(channel)
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
        finally:
            channel.close()
    finally:
        code = server.stop()
    assert code == 0, f"exit code {code} after SIGTERM\n{server.log()}"

    # The database the server migrated is current: `migrate --status` lists nothing pending.
    status = run_zen("migrate", "--status", data_dir=data_dir)
    listing = status.stdout + status.stderr
    assert "applied" in listing, listing
    assert not any(line.lstrip().lower().startswith("pending") for line in listing.splitlines()), listing

    # A second start on the same data dir keeps the PKI (clients keep working).
    ca_before = (data_dir / "pki" / "ca.crt").read_bytes()
    again = ZenServer(data_dir=data_dir).start()
    try:
        assert (data_dir / "pki" / "ca.crt").read_bytes() == ca_before
        channel = again.channel()
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT
            )
            assert response.status in (
                health_pb2.HealthCheckResponse.SERVING,
                health_pb2.HealthCheckResponse.NOT_SERVING,
            )
        except grpc.RpcError as error:  # pragma: no cover - reported with the server log
            raise AssertionError(f"{error.code()} {error.details()}\n{again.log()}") from error
        finally:
            channel.close()
    finally:
        assert again.stop() == 0, again.log()


def postgres_admin_url() -> str:
    return os.environ.get("ZEN_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def psql(url: str, sql: str) -> None:
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, capture_output=True,
                   text=True, timeout=30)


@pytest.fixture
def postgres_database():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    admin = postgres_admin_url()
    reason = None
    if shutil.which("psql") is None:
        reason = "psql is not installed"
    else:
        try:
            psql(admin, "SELECT 1")
        except (subprocess.SubprocessError, OSError) as error:
            reason = f"PostgreSQL at {admin} is not reachable: {getattr(error, 'stderr', error)}"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"zen_conformance_{uuid.uuid4().hex[:12]}"
    psql(admin, f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_serves_on_postgres(tmp_path, postgres_database):
    server = ZenServer(data_dir=tmp_path / "data", extra_args=["--database-url", postgres_database]).start()
    try:
        ready = http_session().get(f"{server.http_base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        database = ready.json()["checks"]["database"]
        assert "postgres" in json.dumps(database).lower(), database
        channel = server.channel()
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="zen.tenancy.v1.TenancyService"), timeout=RPC_TIMEOUT
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            channel.close()
    finally:
        code = server.stop()
    assert code == 0, server.log()
    status = run_zen("migrate", "--status", "--database-url", postgres_database, data_dir=tmp_path / "data")
    assert not any(line.lstrip().lower().startswith("pending") for line in status.stdout.splitlines()), status.stdout
