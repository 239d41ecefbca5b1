"""(o) Traces: a real OTLP receiver records what `zen serve` exports.

The receivers are built on the official OTLP protobufs (PyPI `opentelemetry-proto`): one speaks
OTLP/gRPC (`TraceService.Export` on grpcio), one OTLP/HTTP with protobuf bodies
(`POST /v1/traces`). A Standard Webhooks delivery signed by the official library and carrying a
W3C `traceparent` must come back as one trace: the HTTP edge span (a child of the caller's span),
the gateway's client span, the gRPC front's server span, the verification and the commit spans,
each the child of the one before, plus the commit batch span linked to the delivery. No secret,
token, signature or body may appear anywhere in what was exported, and the log lines written
inside the request carry its trace id.
"""

from __future__ import annotations

import http.server
import json
import secrets
import subprocess
import threading
import time
import uuid
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from support import ZenServer, clean_env, free_port, http_session, zen_binary
from test_webhooks import (
    PASSWORD,
    SECRET_KEYS,
    Source,
    add_local_user,
    login,
    mutating,
    payload,
    scheme,
    sw_headers,
)

HTTP_TIMEOUT = 15
EXPORT_WAIT = 20.0  # seconds for spans to arrive (the batch delay is set to 200 ms)


class Recorder:
    """Spans received, flattened, with the raw request bytes kept for grepping."""

    def __init__(self):
        self.lock = threading.Lock()
        self.spans: list[trace_pb2.Span] = []
        self.raw: list[bytes] = []

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest, raw: bytes) -> None:
        with self.lock:
            self.raw.append(raw)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)

    def of_trace(self, trace_id: bytes) -> list[trace_pb2.Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def all(self) -> list[trace_pb2.Span]:
        with self.lock:
            return list(self.spans)

    def wait_for(self, predicate, what: str):
        deadline = time.monotonic() + EXPORT_WAIT
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            time.sleep(0.1)
        names = sorted({s.name for s in self.all()})
        raise AssertionError(f"no {what} within {EXPORT_WAIT}s; spans received: {names}")


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def Export(self, request, context):  # noqa: N802 (the OTLP method name)
        self.recorder.add(request, request.SerializeToString())
        return trace_service_pb2.ExportTraceServiceResponse()


class HttpReceiver(http.server.BaseHTTPRequestHandler):
    recorder: Recorder

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.recorder.add(request, body)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def attributes(span: trace_pb2.Span) -> dict:
    out = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = getattr(value, kind) if kind else None
    return out


def server_with(tmp_path_factory, name: str, env: dict[str, str]) -> ZenServer:
    zen = ZenServer(
        data_dir=tmp_path_factory.mktemp(name) / "data",
        extra_args=["--local-login", "true"],
        env={"ZEN_WEBHOOK_SECRET_KEYS": SECRET_KEYS, "OTEL_BSP_SCHEDULE_DELAY": "200", **env},
    ).start()
    return zen


@pytest.fixture(scope="module")
def grpc_collector():
    recorder = Recorder()
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(GrpcReceiver(recorder), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield recorder, port
    server.stop(0)


@pytest.fixture(scope="module")
def traced(tmp_path_factory, grpc_collector):
    recorder, port = grpc_collector
    zen = server_with(tmp_path_factory, "zen-traces", {
        "ZEN_OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_SERVICE_NAME": "zen-under-test",
    })
    try:
        add_local_user(zen, "root", admin=True)
        add_local_user(zen, "tess", admin=False)
        yield zen, recorder
    finally:
        zen.stop()


@pytest.fixture(scope="module")
def source(traced):
    zen, _ = traced
    http = http_session()
    root = login(zen, http, "root")
    r = http.post(f"{zen.http_base}/v1/tenants", json={"name": "traced", "displayName": "Traced"},
                  headers=mutating(root), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    tenant_id = r.json()["tenant"]["tenantId"]
    src = Source(zen, http, (tenant_id, root), {"name": "traced-source", "verification": scheme("STANDARD_WEBHOOKS")})
    return src, root


def new_traceparent() -> tuple[str, bytes, bytes]:
    trace_id, parent_id = secrets.token_bytes(16), secrets.token_bytes(8)
    return f"00-{trace_id.hex()}-{parent_id.hex()}-01", trace_id, parent_id


def test_a_webhook_delivery_is_one_trace_from_edge_to_commit(traced, source):
    zen, recorder = traced
    src, root = source
    traceparent, trace_id, caller_span = new_traceparent()
    body = payload(secretish="sk_live_" + uuid.uuid4().hex)
    headers = sw_headers(src.secret, f"msg_{uuid.uuid4().hex}", body)
    r = src.post(body, {**headers, "traceparent": traceparent, "tracestate": "vendor=abc"})
    assert r.status_code == 202, r.text

    wanted = {"webhook.commit", "webhook.verify"}

    def complete():
        spans = recorder.of_trace(trace_id)
        names = {s.name for s in spans}
        return spans if wanted <= names and any(s.kind == trace_pb2.Span.SPAN_KIND_SERVER for s in spans) else None

    spans = recorder.wait_for(complete, "complete trace of the delivery")
    by_id = {s.span_id: s for s in spans}

    edge = next(s for s in spans if s.parent_span_id == caller_span)
    assert edge.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert edge.name == "POST /webhooks/{source_id}", edge.name
    edge_attrs = attributes(edge)
    assert edge_attrs["http.request.method"] == "POST"
    assert edge_attrs["http.route"] == "/webhooks/{source_id}", "the template, never the raw path"
    assert edge_attrs["http.response.status_code"] == 202
    assert edge_attrs["zen.request_id"] == r.headers["X-Request-Id"]
    assert edge.trace_state == "vendor=abc", "tracestate travels with the context"

    gateway = next(s for s in spans if s.parent_span_id == edge.span_id)
    assert gateway.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    gateway_attrs = attributes(gateway)
    assert gateway_attrs["rpc.system"] == "grpc"
    assert gateway.name == f"{gateway_attrs['rpc.service']}/{gateway_attrs['rpc.method']}"

    front = next(s for s in spans if s.parent_span_id == gateway.span_id)
    assert front.kind == trace_pb2.Span.SPAN_KIND_SERVER, "the inner hop continues the same trace"
    assert front.name == gateway.name
    front_attrs = attributes(front)
    assert front_attrs["rpc.system"] == "grpc"
    assert front_attrs["rpc.grpc.status_code"] == 0
    assert front_attrs["zen.request_id"] == r.headers["X-Request-Id"]

    def descends_from(span, ancestor) -> bool:
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            if span.span_id == ancestor.span_id:
                return True
        return False

    verify = next(s for s in spans if s.name == "webhook.verify")
    commit = next(s for s in spans if s.name == "webhook.commit")
    assert descends_from(verify, front) and descends_from(commit, front)
    assert attributes(verify)["zen.webhook.scheme"] == "standard-webhooks"
    for span in (edge, gateway, front, verify, commit):
        assert span.status.code != trace_pb2.Status.STATUS_CODE_ERROR, span.name

    # The batch that stored it is a span of its own, linked to the delivery's commit span.
    batch = recorder.wait_for(
        lambda: next((s for s in recorder.all() if s.name == "webhook.commit_batch"
                      and any(link.span_id == commit.span_id for link in s.links)), None),
        "commit batch span linked to the delivery",
    )
    assert attributes(batch)["db.system"] == "sqlite"

    # Nothing secret in anything exported.
    exported = b"".join(recorder.raw)
    for secret in (src.secret, headers["webhook-signature"], body.decode(), root["Authorization"].split()[1],
                   PASSWORD):
        assert secret.encode() not in exported, f"exported spans contain {secret[:12]}..."
    assert b"sk_live_" not in exported


def test_a_refused_delivery_marks_verification_failed_and_logs_carry_the_trace(traced, source):
    zen, recorder = traced
    src, _ = source
    traceparent, trace_id, _ = new_traceparent()
    body = payload()
    headers = sw_headers(src.secret, f"msg_{uuid.uuid4().hex}", body)
    r = src.post(body + b" ", {**headers, "traceparent": traceparent})
    assert r.status_code == 401, r.text

    verify = recorder.wait_for(
        lambda: next((s for s in recorder.of_trace(trace_id) if s.name == "webhook.verify"), None),
        "verification span of the refused delivery",
    )
    assert verify.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    edge = recorder.wait_for(
        lambda: next((s for s in recorder.of_trace(trace_id) if s.kind == trace_pb2.Span.SPAN_KIND_SERVER
                      and "http.route" in attributes(s)), None),
        "edge span of the refused delivery",
    )
    assert attributes(edge)["http.response.status_code"] == 401
    # A client error is not a server fault (OpenTelemetry's HTTP server convention).
    assert edge.status.code != trace_pb2.Status.STATUS_CODE_ERROR
    # "webhook verification failed" is logged inside the call: its line names the trace.
    deadline = time.monotonic() + 5
    while trace_id.hex() not in zen.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trace_id.hex() in zen.log(), "log lines inside the request carry its trace_id"


def test_the_service_is_named_from_the_standard_variables(traced, source):
    _, recorder = traced
    # Every export request names the service; OTEL_SERVICE_NAME was set for this server.
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(recorder.raw[0])
    names = [kv.value.string_value for kv in request.resource_spans[0].resource.attributes
             if kv.key == "service.name"]
    assert names == ["zen-under-test"]


def test_otlp_over_http_protobuf(tmp_path_factory):
    recorder = Recorder()
    handler = type("Handler", (HttpReceiver,), {"recorder": recorder})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    zen = server_with(tmp_path_factory, "zen-traces-http", {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{httpd.server_address[1]}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    })
    try:
        traceparent, trace_id, caller_span = new_traceparent()
        r = http_session().get(f"{zen.http_base}/ready", headers={"traceparent": traceparent}, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200
        span = recorder.wait_for(
            lambda: next((s for s in recorder.of_trace(trace_id) if s.parent_span_id == caller_span), None),
            "edge span over OTLP/HTTP",
        )
        assert span.name == "GET /ready"
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(recorder.raw[0])
        names = [kv.value.string_value for kv in request.resource_spans[0].resource.attributes
                 if kv.key == "service.name"]
        assert names == ["zen"], "the default service name"
    finally:
        zen.stop()
        httpd.shutdown()


def test_an_unusable_exporter_setting_is_refused_at_start(tmp_path_factory):
    zen = ZenServer(
        data_dir=tmp_path_factory.mktemp("zen-traces-bad") / "data",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    )
    with pytest.raises(AssertionError) as failure:
        zen.start(attempts=1)
    assert "http/json" in str(failure.value) and "grpc or http/protobuf" in str(failure.value)


HOOK = """#!/bin/sh
cat > /dev/null
echo '{"success": true, "message": "applied", "probes": [{"name": "ready", "success": true, "duration_ms": 5, "message": "ok"}]}'
"""


def test_a_remediation_trace_continues_in_the_agent_and_back(traced, tmp_path):
    """The command carries the dispatch's context; `zen agent` continues it while it executes
    and returns its own in the reports, which the server records inside that trace."""
    zen, recorder = traced
    cli = {"ZEN_CLI_CONFIG": str(tmp_path / "root.json")}

    def run(*args: str, stdin: str | None = None, **env: str) -> str:
        proc = subprocess.run([str(zen_binary()), *args], input=stdin, capture_output=True, text=True,
                              env=clean_env(**cli, **env), cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, f"zen {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout.strip()

    run("login", "--url", zen.http_base, "--username", "root", "--password-stdin", stdin=PASSWORD + "\n")
    tenant = run("tenant", "create", "traced-agent", "-o", "id")
    cluster = run("cluster", "create", "--tenant", tenant, "prod-1", "-o", "id")
    token = run("token", "create", "--tenant", tenant, "--cluster", cluster, "-o", "id")
    agent_dir = tmp_path / "agent"
    run("agent", "bootstrap", "--url", zen.http_base, "--grpc-url", f"https://{zen.grpc_target}",
        "--token", token, "--dir", str(agent_dir))
    hook = tmp_path / "apply.sh"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    collector = next(v for k, v in zen.env.items() if k == "ZEN_OTEL_EXPORTER_OTLP_ENDPOINT")
    agent = subprocess.Popen(
        [str(zen_binary()), "agent", "run", "--dir", str(agent_dir), "--input", "/dev/null", "--follow",
         "--exec-hook", str(hook)],
        env=clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=collector, OTEL_SERVICE_NAME="zen-agent",
                      OTEL_BSP_SCHEDULE_DELAY="200"),
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        (tmp_path / "remediation.json").write_text(json.dumps({
            "clusterId": cluster, "title": "traced change", "risk": "RISK_LEVEL_LOW",
            "action": {"serverSideApply": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop",
                                           "name": "api", "patch": {"metadata": {"labels": {"traced": "yes"}}}}}}))
        remediation = run("remediation", "propose", "--tenant", tenant, "--file", "remediation.json", "-o", "id")
        run("remediation", "wait", "--tenant", tenant, remediation, "--status", "SUCCEEDED",
            "--timeout-seconds", "60")

        def chain():
            spans = recorder.all()
            dispatch = next((s for s in spans if s.name == "remediation.dispatch"
                             and attributes(s).get("zen.remediation_id") == remediation), None)
            if dispatch is None:
                return None
            execute = next((s for s in spans if s.name == "remediation.execute"
                            and s.parent_span_id == dispatch.span_id), None)
            if execute is None:
                return None
            reports = [s for s in spans if s.name == "remediation.report" and s.parent_span_id == execute.span_id]
            phases = {attributes(s).get("zen.phase") for s in reports}
            return (dispatch, execute, reports) if "Succeeded" in phases else None

        dispatch, execute, reports = recorder.wait_for(chain, "dispatch -> agent execution -> reports")
        assert execute.trace_id == dispatch.trace_id and all(r.trace_id == dispatch.trace_id for r in reports)
        assert attributes(execute)["zen.execution_id"] == attributes(dispatch)["zen.execution_id"]
        # The execution span came from the agent's process, named by its own service.
        with recorder.lock:
            services = set()
            for raw in recorder.raw:
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(raw)
                for resource in request.resource_spans:
                    if any(s.span_id == execute.span_id for sc in resource.scope_spans for s in sc.spans):
                        services |= {kv.value.string_value for kv in resource.resource.attributes
                                     if kv.key == "service.name"}
        assert services == {"zen-agent"}
    finally:
        agent.terminate()
        agent.wait(timeout=30)
