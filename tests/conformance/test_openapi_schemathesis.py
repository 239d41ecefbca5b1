"""(g) The REST surface against its own OpenAPI document, with schemathesis.

A `zen serve` with local login on (started here with the suite's ZenServer, since the session
server has local login off) gets a platform-admin user from `zen user add`; schemathesis loads
the live `/openapi.json` and, for every operation, sends generated requests (positive and
negative data, the coverage phase's boundary cases, and a bounded number of fuzzed examples)
with that user's bearer token and a fresh `X-Request-Id` per mutating request, under every
check schemathesis has (see CHECKS): no 5xx, documented status codes, schemas, content types
and headers, and, since the contracts' validation rules are in the document, no schema-valid
request refused with 400 and no schema-invalid one accepted. Hypothesis is derandomized.

`POST /auth/logout` (it would end the suite's session) and the event watch (a stream that stays
open; test_gateway.py covers it) are left out.
Every operation is implemented and exercised; none is skipped.
"""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest
import schemathesis  # requirements-dev.txt; a missing install fails here, never skips
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import CHECKS as CHECK_REGISTRY
from schemathesis.checks import load_all_checks

from support import ZenServer, clean_env, http_session, zen_binary

PASSWORD = "correct horse battery staple"
#: Fuzzed examples per operation (on top of the explicit and coverage cases). With ~55
#: operations this keeps the module well under a minute against a debug build.
MAX_EXAMPLES = 6
load_all_checks()
#: CEL rules (the few cross-field rules of the contracts) have no JSON Schema form: the document
#: states each in the description of the message or field it applies to, as "Rule `id`: message".
CEL_RULE = re.compile(r"Rule `([^`]+)`: ([^\n]+?)\.?(?:\n|$)")
CEL_MESSAGES: set[str] = set()


def _cel_rules_of(document) -> None:
    """Every CEL rule the document states, by message and by id."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            for rule_id, message in CEL_RULE.findall(node):
                CEL_MESSAGES.update({message.rstrip("."), f"breaks the rule {rule_id}"})


def _breaks_only_stated_cel_rules(response) -> bool:
    if response.status_code != 400:
        return False
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        return False
    return bool(errors) and all(e.get("message") in CEL_MESSAGES for e in errors)


_positive = CHECK_REGISTRY.get_by_names(["positive_data_acceptance"])[0]


def positive_data_acceptance_but_cel(ctx, response, case):
    """schemathesis's positive_data_acceptance, except for a 400 whose every violation is a CEL
    rule the document states in words: a fuzzer cannot read them, a client can."""
    if _breaks_only_stated_cel_rules(response):
        return None
    # The coverage phase can label a case positive while one of its parts (the body) was
    # generated negative: such a request is not schema-valid.
    meta = case.meta
    if meta is not None and any(c.mode.is_negative for c in meta.components.values()):
        return None
    return _positive(ctx, response, case)


#: Every check schemathesis has: no 5xx, documented status codes, content types, headers and
#: schemas, schema-valid requests accepted (never 400), schema-invalid ones refused, required
#: headers enforced, unsupported methods refused with 405 and `Allow`, authentication not
#: ignored, and the stateful ones (use after free, resource availability, object-level
#: authorization) where a case carries the state they need.
CHECKS = [
    positive_data_acceptance_but_cel if check is _positive else check
    for check in CHECK_REGISTRY.get_all()
]
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
HTTP_TIMEOUT = 15


def add_local_user(server: ZenServer, username: str, *, admin: bool) -> None:
    """`zen user add` on the server's data dir, password on stdin, as an operator would."""
    cmd = [str(zen_binary()), "--data-dir", str(server.data_dir), "user", "add", "--username", username,
           "--email", f"{username}@example.test", "--password-stdin"]
    if admin:
        cmd.append("--admin")
    proc = subprocess.run(cmd, input=PASSWORD + "\n", env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def login(server: ZenServer, username: str) -> str:
    response = http_session().post(
        f"{server.http_base}/auth/local/login",
        json={"username": username, "password": PASSWORD},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]["accessToken"]


@pytest.fixture(scope="module")
def zen_local(tmp_path_factory):
    server = ZenServer(
        data_dir=tmp_path_factory.mktemp("zen-schemathesis") / "data",
        extra_args=["--local-login", "true"],
    ).start()
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"zen serve exited {code} after SIGTERM\n{server.log()}"


@pytest.fixture(scope="module")
def fuzzer(zen_local) -> str:
    add_local_user(zen_local, "fuzzer", admin=True)
    return "fuzzer"


@pytest.fixture(scope="module")
def token(zen_local, fuzzer) -> str:
    """The session the fuzzing runs in (each test module fixture logs in on its own, so one
    session ending cannot take the others with it)."""
    return login(zen_local, fuzzer)


@pytest.fixture(scope="module")
def reader_token(zen_local, fuzzer) -> str:
    return login(zen_local, fuzzer)


@pytest.fixture(scope="module")
def resources(zen_local, fuzzer) -> dict[str, str]:
    """A tenant with a cluster, so pinned path parameters address things that exist."""
    session = http_session()
    headers = {"Authorization": f"Bearer {login(zen_local, fuzzer)}"}
    tenant = session.post(
        f"{zen_local.http_base}/v1/tenants",
        json={"name": "fuzzed"},
        headers={**headers, "X-Request-Id": str(uuid.uuid4())},
        timeout=HTTP_TIMEOUT,
    )
    assert tenant.status_code == 200, tenant.text
    tenant_id = tenant.json()["tenant"]["tenantId"]
    cluster = session.post(
        f"{zen_local.http_base}/v1/tenants/{tenant_id}/clusters",
        json={"name": "fuzzed-cluster"},
        headers={**headers, "X-Request-Id": str(uuid.uuid4())},
        timeout=HTTP_TIMEOUT,
    )
    assert cluster.status_code == 200, cluster.text
    return {"tenant_id": tenant_id, "cluster_id": cluster.json()["cluster"]["clusterId"]}


def load_schema(server: ZenServer, token: str):
    schema = schemathesis.openapi.from_url(f"{server.http_base}/openapi.json", timeout=HTTP_TIMEOUT)
    # Page tokens are opaque cursors only the server issues (like the ids of things that
    # exist): a made-up one is rightly a 400, so the first page is asked for.
    schema.config.update(
        base_url=server.http_base,
        headers={"Authorization": f"Bearer {token}"},
        parameters={"pageToken": ""},
    )
    _cel_rules_of(schema.raw_schema)
    return schema


@pytest.fixture(scope="module")
def api_schema(zen_local, token):
    return load_schema(zen_local, token)


@pytest.fixture(scope="module")
def pinned_read_schema(zen_local, reader_token, resources):
    """Path parameters `tenant_id` / `cluster_id` pinned to real resources, so 200 bodies (not
    just 400s for ids that are not UUIDs) are checked against the document."""
    schema = load_schema(zen_local, reader_token)
    schema.config.update(parameters={"pageToken": "", **resources})
    return schema


def call_and_check(case, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    generated = (case.headers or {}).get("X-Request-Id")
    # A valid generated id is replaced by a fresh one: Hypothesis reuses small values ("0"),
    # which would turn most mutating cases into idempotent replays or key-reuse conflicts.
    # Invalid ones (negative cases) are kept: their rejection is part of the contract.
    if isinstance(generated, str) and REQUEST_ID.match(generated):
        headers["X-Request-Id"] = str(uuid.uuid4())
    response = case.call(headers=headers, timeout=HTTP_TIMEOUT)
    case.validate_response(response, headers=headers, checks=CHECKS)


fuzz_settings = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # a fixed seed: the same cases on every run
    deadline=None,
    database=None,  # no .hypothesis directory in the work tree
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

@pytest.fixture(autouse=True)
def _schemathesis_lazy_node_id(request):
    """schemathesis 4.32's lazy loader reads and rewrites `node._nodeid`, which pytest 9.2 no
    longer has (node ids are structured); give it the attribute it expects."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# Filters go on the lazy schema: it replaces the fixture schema's own filter set. Left out:
# logout (with the suite's token it would end that session and turn every later case into a
# 401) and the event watch, a stream that stays open (test_gateway.py covers it).
api = (
    schemathesis.pytest.from_fixture("api_schema")
    .exclude(path="/auth/logout")
    .exclude(operation_id="IngestService_WatchEvents")
)
pinned = (
    schemathesis.pytest.from_fixture("pinned_read_schema")
    .include(method="GET")
    .exclude(operation_id="IngestService_WatchEvents")
)


@api.parametrize()
@fuzz_settings
def test_every_operation_conforms_to_the_document(case, token):
    call_and_check(case, token)


@pinned.parametrize()
@fuzz_settings
def test_reads_of_real_resources_conform_to_the_document(case, reader_token):
    call_and_check(case, reader_token)


def test_the_document_is_served_and_valid_openapi_3_1(zen_local):
    response = http_session().get(f"{zen_local.http_base}/openapi.json", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    # schemathesis refuses a document that is not valid OpenAPI; loading it is the check.
    schemathesis.openapi.from_dict(document)
