"""(m) Metrics: what the admin listener's /metrics serves, and what the chart queries of it.

A `zen serve` with local login gets a small workload from outside: a failed and a successful
login, REST calls through the gateway (a tenant, a cluster, a webhook source), a signed webhook
delivery and a refused one, an agent enrolled with a bootstrap token that streams one event, and
a remediation proposed and cancelled.
Then /metrics on the admin listener is scraped and:

* `promtool check metrics` (Prometheus' own linter, reading the scrape on stdin) must exit 0 and
  report nothing;
* every metric that a Grafana dashboard of the chart (helm/zen/dashboards/*.json) queries, and
  every metric that an alert of the chart's PrometheusRule queries, must be one that Zen
  exports: its `# TYPE` line is in the scrape (`_bucket`, `_sum` and `_count` name the series of
  a histogram). The only other names allowed are those of NON_ZEN_METRICS, which come from
  elsewhere in a cluster.

Without a server: every dashboard is a Grafana dashboard of the expected shape, and every query
in it parses as PromQL (`promtool check rules` on the queries, Grafana's variables substituted).

promtool comes from the Debian package prometheus (scripts/test.sh installs it before this
stage); helm is $ZEN_HELM, as for test_chart.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from support import REPO_ROOT, ZenServer, clean_env, http_session, run_zen, zen_binary

CHART = REPO_ROOT / "helm" / "zen"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
PASSWORD = "correct horse battery staple"
HTTP_TIMEOUT = 15
SECRET_KEYS = f"k1:{base64.b64encode(bytes(range(32))).decode()}"  # a test key

#: Metrics the dashboards may query that Zen does not export, and where they come from. Keep it
#: short: everything else a dashboard or an alert shows must be Zen's own.
NON_ZEN_METRICS = {
    "container_cpu_usage_seconds_total": "cAdvisor, scraped from the kubelet",
    "container_memory_working_set_bytes": "cAdvisor, scraped from the kubelet",
}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

#: Grafana's variables, replaced by plain values so that a query parses as PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${release}": "zen",
    "$release": "zen",
    "$namespace": ".*",
    "${namespace}": ".*",
}


# -- PromQL names ---------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_ZEN_NAME = re.compile(r"(?<![\w:$])(zen_[A-Za-z0-9_:]*)(?=\s*[{\[),]|\s|$)")
_SELECTOR = re.compile(r"(?<![\w:$])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> tuple[set[str], set[str]]:
    """(Zen's metric names, other selectors' metric names) used by a PromQL expression.

    Zen's: identifiers starting with `zen_` followed by `{`, `[`, `)`, `,` or whitespace (a
    selector, a range, a function argument, a bare name). Others: any identifier followed by
    `{` (a selector with matchers). String literals (label values, regexes) and label lists
    (`by (...)`, `on (...)`, ...) are left out.
    """
    bare = _LABEL_LIST.sub(" ", _STRING.sub('""', expr))
    zen = set(_ZEN_NAME.findall(bare))
    others = {n for n in _SELECTOR.findall(bare) if not n.startswith("zen_")}
    return zen, others


def dashboard_queries(doc: dict) -> list[tuple[str, str]]:
    """(where, query) for every panel target and every query variable of a dashboard."""
    found = []

    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(doc.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"]))
    for variable in doc.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            if query:
                found.append((f"variable {variable['name']!r}", query))
    return found


def promql(query: str) -> str:
    """A dashboard query as plain PromQL: label_values(X, l) becomes X, variables are filled."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_]\w*\s*\)\s*", query)
    if match:
        query = match.group(1)
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        query = query.replace(variable, GRAFANA_VARIABLES[variable])
    return query


def exported_types(scrape: str) -> dict[str, str]:
    """{metric family: type} from the `# TYPE` lines of a text exposition."""
    types = {}
    for line in scrape.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            types[parts[2]] = parts[3]
    return types


def missing_from(names: set[str], types: dict[str, str]) -> set[str]:
    """The names (a histogram's series by the histogram's name) that the scrape lacks."""
    missing = set()
    for name in names:
        if name in types:
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SERIES if name.endswith(s)), None)
        if base is not None and types.get(base) in ("histogram", "summary"):
            continue
        missing.add(base if base is not None else name)
    return missing


# -- tools ----------------------------------------------------------------------------------------


def tool(name: str, env: str | None = None) -> str:
    path = (os.environ.get(env) if env else None) or shutil.which(name)
    if not path:
        if os.environ.get("CI"):
            raise AssertionError(f"{name} is missing: scripts/test.sh installs it")
        pytest.skip(f"{name} is not installed (scripts/test.sh provides it)")
    return path


def alert_rules() -> list[dict]:
    """The alerting rules of the chart's PrometheusRule, rendered with the default values."""
    proc = subprocess.run(
        [tool("helm", "ZEN_HELM"), "template", "zen", str(CHART), "--set", "metrics.prometheusRule.enabled=true",
         "--show-only", "templates/prometheusrule.yaml"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"] if "alert" in rule]


# -- without a server -----------------------------------------------------------------------------


def test_the_chart_has_the_dashboards():
    names = {path.name for path in DASHBOARDS}
    assert {"overview.json", "remediation.json", "cluster-health.json", "ingest-webhooks.json"} <= names, names


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_each_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus(path):
    doc = json.loads(path.read_text())
    assert doc["schemaVersion"] == 39
    assert doc["title"].startswith("Zen / "), doc["title"]
    assert re.fullmatch(r"[a-z0-9-]{1,40}", doc["uid"]), doc["uid"]
    assert doc.get("id") is None, "an exported id would clash on import"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    assert dashboard_queries(doc), "a dashboard without queries"


def test_every_dashboard_query_parses_as_promql(tmp_path):
    """Each query becomes a recording rule, and `promtool check rules` parses them all."""
    rules = []
    for path in DASHBOARDS:
        for where, query in dashboard_queries(json.loads(path.read_text())):
            leftover = re.findall(r"\$\{?\w+", promql(query))
            assert not leftover, f"{path.name} {where}: unknown Grafana variable {leftover} in {query}"
            rules.append({"record": f"dashboard:query_{len(rules)}", "expr": promql(query),
                          "labels": {"where": f"{path.name} {where}"}})
    rules_file = tmp_path / "queries.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run([tool("promtool"), "check", "rules", str(rules_file)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboards_and_alerts_use_no_unlisted_foreign_metric():
    used = set()
    queries = [(p.name, w, q) for p in DASHBOARDS for w, q in dashboard_queries(json.loads(p.read_text()))]
    queries += [("PrometheusRule", rule["alert"], rule["expr"]) for rule in alert_rules()]
    for source, where, query in queries:
        zen, others = metric_names(query)
        assert zen or others, f"{source} {where}: no metric found in {query}"
        unlisted = others - set(NON_ZEN_METRICS)
        assert not unlisted, f"{source} {where} queries {sorted(unlisted)}, which Zen does not export"
        used |= others
    assert used == set(NON_ZEN_METRICS), f"NON_ZEN_METRICS lists names no query uses: {set(NON_ZEN_METRICS) - used}"


def test_dashboards_enabled_renders_one_labelled_configmap_per_dashboard():
    helm = tool("helm", "ZEN_HELM")
    proc = subprocess.run([helm, "template", "zen", str(CHART)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "ConfigMap"], "off by default"
    proc = subprocess.run([helm, "template", "zen", str(CHART), "--set", "dashboards.enabled=true",
                           "--set", "dashboards.annotations.grafana_folder=Zen"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    maps = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "ConfigMap"]
    rendered = {}
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Zen"}
        (key, text), = cm["data"].items()
        rendered[key] = json.loads(text)
    assert rendered == {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


def test_the_name_extraction():
    zen, others = metric_names(
        'sum by (le) (rate(zen_a_bucket{x="zen_not_a_metric"}[5m])) / zen_b + max(zen_c)'
        ' - count(container_cpu_usage_seconds_total{pod=~"zen-.*"}) and on (zen_label) zen_d[1m]'
    )
    assert zen == {"zen_a_bucket", "zen_b", "zen_c", "zen_d"}
    assert others == {"container_cpu_usage_seconds_total"}
    assert missing_from({"zen_a_bucket", "zen_b", "zen_c_total", "zen_e_sum"},
                        {"zen_a": "histogram", "zen_b": "gauge", "zen_c_total": "counter"}) == {"zen_e"}


# -- a server with a workload ---------------------------------------------------------------------


def add_local_user(server: ZenServer, username: str) -> None:
    cmd = [str(zen_binary()), "--data-dir", str(server.data_dir), "user", "add", "--username", username,
           "--email", f"{username}@example.test", "--password-stdin", "--admin"]
    proc = subprocess.run(cmd, input=PASSWORD + "\n", env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def zen_hmac_headers(secret: str, body: bytes) -> dict[str, str]:
    """Zen's own webhook scheme: HMAC-SHA256 of "{timestamp}.{nonce}.{body}" (docs/WEBHOOKS.md)."""
    ts, nonce = str(int(time.time())), str(uuid.uuid4())
    signature = hmac.new(secret.encode(), f"{ts}.{nonce}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": signature}


@pytest.fixture(scope="module")
def scrape(tmp_path_factory) -> str:
    """/metrics of a server that served the workload of the module docstring."""
    tmp = tmp_path_factory.mktemp("zen-metrics")
    server = ZenServer(
        data_dir=tmp / "data",
        extra_args=["--local-login", "true"],
        env={"ZEN_WEBHOOK_SECRET_KEYS": SECRET_KEYS},
    ).start()
    try:
        add_local_user(server, "root")
        http = http_session()
        base = server.http_base

        refused = http.post(f"{base}/auth/local/login", json={"username": "root", "password": "not it"},
                            timeout=HTTP_TIMEOUT)
        assert refused.status_code == 401, refused.text
        r = http.post(f"{base}/auth/local/login", json={"username": "root", "password": PASSWORD},
                      timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']['accessToken']}"}

        def post(path: str, body: dict) -> dict:
            answer = http.post(f"{base}{path}", json=body, headers={**auth, "X-Request-Id": str(uuid.uuid4())},
                               timeout=HTTP_TIMEOUT)
            assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text}"
            return answer.json()

        tenant_id = post("/v1/tenants", {"name": "metrics", "displayName": "Metrics"})["tenant"]["tenantId"]
        r = http.get(f"{base}/v1/tenants/{tenant_id}", headers=auth, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text

        created = post(f"/v1/tenants/{tenant_id}/webhookSources",
                       {"name": "metrics", "enabled": True, "verification": {"scheme": "WEBHOOK_SCHEME_ZEN_HMAC"}})
        source_id, secret = created["webhookSource"]["sourceId"], created["secret"]
        body = json.dumps({"kind": "test", "nonce": uuid.uuid4().hex}).encode()
        r = http.post(f"{base}/webhooks/{source_id}", data=body, headers=zen_hmac_headers(secret, body),
                      timeout=HTTP_TIMEOUT)
        assert r.status_code == 202, r.text
        r = http.post(f"{base}/webhooks/{source_id}", data=body,
                      headers=zen_hmac_headers("not-the-secret-0123456", body), timeout=HTTP_TIMEOUT)
        assert r.status_code == 401, r.text

        cluster_id = post(f"/v1/tenants/{tenant_id}/clusters", {"name": "metrics-1"})["cluster"]["clusterId"]
        token = post(f"/v1/tenants/{tenant_id}/clusters/{cluster_id}/bootstrapTokens", {})["token"]
        agent_dir = tmp / "agent"
        run_zen("agent", "bootstrap", "--url", base, "--grpc-url", f"https://{server.grpc_target}",
                "--server-name", "localhost", "--token", token, "--dir", str(agent_dir))
        events = tmp / "events.jsonl"
        events.write_text(json.dumps({"id": "metrics-1", "source": "trivy", "severity": "high",
                                      "type": "vulnerability", "title": "from the metrics test"}) + "\n")
        ran = run_zen("agent", "run", "--dir", str(agent_dir), "--input", str(events))
        assert "accepted 1" in ran.stdout, ran.stdout

        # A remediation that waits for approval, then is cancelled: a terminal state.
        proposed = post(f"/v1/tenants/{tenant_id}/remediations", {
            "clusterId": cluster_id, "title": "metrics", "risk": "RISK_LEVEL_HIGH",
            "action": {"serverSideApply": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "default",
                                           "name": "web", "patch": {"spec": {"replicas": 2}}}},
        })["remediation"]
        remediation = f"/v1/tenants/{tenant_id}/remediations/{proposed['remediationId']}"
        cancelled = post(f"{remediation}:cancel", {"version": proposed["version"], "reason": "metrics test"})
        assert cancelled["remediation"]["status"] == "REMEDIATION_STATUS_CANCELLED", cancelled

        # Counters appear with their first increment, gauges of background tasks on their
        # first round: scrape until the workload's own metrics are there (or give up).
        deadline = time.monotonic() + 15
        while True:
            r = http.get(f"{server.admin_base}/metrics", timeout=HTTP_TIMEOUT)
            assert r.status_code == 200, r.text
            text = r.text
            if all(n in text for n in ("zen_webhook_requests_total", "zen_ingest_events_total")) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        (tmp / "metrics.txt").write_text(text)
        yield text
    finally:
        code = server.stop()
    assert code == 0, f"zen serve exited {code} after SIGTERM\n{server.log()}"


def test_the_scrape_passes_promtool_check_metrics(scrape):
    proc = subprocess.run([tool("promtool"), "check", "metrics"], input=scrape, capture_output=True, text=True,
                          timeout=60)
    problems = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not problems, f"promtool check metrics exited {proc.returncode}:\n{problems}"


def test_every_metric_a_dashboard_queries_is_exported(scrape):
    types = exported_types(scrape)
    missing = {}
    for path in DASHBOARDS:
        for where, query in dashboard_queries(json.loads(path.read_text())):
            for name in missing_from(metric_names(query)[0], types):
                missing.setdefault(name, []).append(f"{path.name}: {where}")
    assert not missing, "dashboards query metrics that Zen does not export:\n" + "\n".join(
        f"  {name} ({'; '.join(places)})" for name, places in sorted(missing.items()))


def test_every_metric_an_alert_queries_is_exported(scrape):
    types = exported_types(scrape)
    missing = {}
    for rule in alert_rules():
        for name in missing_from(metric_names(rule["expr"])[0], types):
            missing.setdefault(name, []).append(rule["alert"])
    assert not missing, "alerts query metrics that Zen does not export:\n" + "\n".join(
        f"  {name} ({', '.join(alerts)})" for name, alerts in sorted(missing.items()))
