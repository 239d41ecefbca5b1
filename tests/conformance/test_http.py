"""(f) The HTTP side: liveness, readiness with its checks, the database check, metrics."""

from __future__ import annotations

import time

from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import RPC_TIMEOUT, http_session

HTTP_TIMEOUT = 10


def test_health_is_ok(zen):
    response = http_session().get(f"{zen.http_base}/health", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200


def test_readyz_reports_its_checks(zen):
    for path in ("/readyz", "/ready"):
        response = http_session().get(f"{zen.http_base}{path}", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/json")
        checks = response.json()["checks"]
        for name in ("database", "migrations", "cache"):
            assert name in checks, f"{path} lacks the {name} check: {checks}"
            assert checks[name]["status"] in ("healthy", "degraded"), f"{path} {name}: {checks[name]}"


def test_database_health(zen):
    response = http_session().get(f"{zen.admin_base}/health/database", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["status"] in ("healthy", "degraded")


def test_operational_endpoints_are_not_on_the_public_listener(zen):
    """The public listener faces the internet for webhooks: metrics (whose labels name webhook
    sources) and deep health answer only on the admin listener."""
    for path in ("/metrics", "/health/database"):
        response = http_session().get(f"{zen.http_base}{path}", timeout=HTTP_TIMEOUT)
        assert response.status_code == 404, f"{path}: {response.status_code} {response.text[:200]}"


def test_metrics_count_grpc_requests(zen, admin_channel):
    health_pb2_grpc.HealthStub(admin_channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
    deadline = time.monotonic() + 10
    while True:
        response = http_session().get(f"{zen.admin_base}/metrics", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        if "zen_grpc_requests_total" in response.text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "zen_grpc_requests_total" in response.text, response.text[:2000]


def test_unknown_path_is_404(zen):
    response = http_session().get(f"{zen.http_base}/no-such-path-{time.time_ns()}", timeout=HTTP_TIMEOUT)
    assert response.status_code == 404


def test_database_health_is_deep(zen):
    """Deep health names what an operator checks first: ping latency, migrations, the pool and
    the slowest recent statements (Zen's own timing on SQLite)."""
    # A refused call is audited: at least one statement ran through the store.
    assert http_session().get(f"{zen.http_base}/v1/tenants", timeout=HTTP_TIMEOUT).status_code == 401
    body = http_session().get(f"{zen.admin_base}/health/database", timeout=HTTP_TIMEOUT).json()
    assert body["backend"] == "sqlite"
    assert body["ping"]["status"] in ("healthy", "degraded") and body["ping"]["latency_ms"] >= 0
    assert body["migrations"]["status"] == "healthy", body["migrations"]
    pool = body["pool"]
    assert pool["max"] >= 1 and pool["size"] == pool["idle"] + pool["in_use"], pool
    assert pool["waiting"] >= 0
    slowest = body["slowest_statements"]
    assert slowest["source"] == "zen"
    # The server has run statements since it started (migrations, readiness checks).
    assert slowest["statements"], slowest
    assert all(s["statement"] and s["duration_ms"] >= 0 for s in slowest["statements"])
