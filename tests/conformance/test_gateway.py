"""(h) The REST/WebSocket gateway seen by third-party clients: `requests` and `websocket-client`.

A `zen serve` with local login on (started here with the suite's ZenServer; the session server
has local login off) gets a platform-admin user from `zen user add`. Everything else goes over
plain HTTP to the gateway on the HTTP port: login, tenants and clusters, problem documents, and
the event watch over WebSocket with the token in `Sec-WebSocket-Protocol`.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import websocket  # the websocket-client package (requirements-dev.txt)

from support import ZenServer, clean_env, http_session, zen_binary

PASSWORD = "correct horse battery staple"
HTTP_TIMEOUT = 15
PROBLEM_MEMBERS = ("type", "title", "status", "detail", "code")


def add_local_user(server: ZenServer, username: str, *, admin: bool) -> None:
    """`zen user add` on the server's data dir, password on stdin, as an operator would."""
    cmd = [str(zen_binary()), "--data-dir", str(server.data_dir), "user", "add", "--username", username,
           "--email", f"{username}@example.test", "--password-stdin"]
    if admin:
        cmd.append("--admin")
    proc = subprocess.run(cmd, input=PASSWORD + "\n", env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def zen_local(tmp_path_factory):
    server = ZenServer(
        data_dir=tmp_path_factory.mktemp("zen-gateway") / "data",
        extra_args=["--local-login", "true"],
    ).start()
    try:
        add_local_user(server, "ada", admin=True)
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"zen serve exited {code} after SIGTERM\n{server.log()}"


@pytest.fixture(scope="module")
def session():
    return http_session()


@pytest.fixture(scope="module")
def login(zen_local, session) -> dict:
    response = session.post(
        f"{zen_local.http_base}/auth/local/login",
        json={"username": "ada", "password": PASSWORD},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


@pytest.fixture(scope="module")
def auth(login) -> dict[str, str]:
    return {"Authorization": f"Bearer {login['token']['accessToken']}"}


@pytest.fixture(scope="module")
def tenant_id(zen_local, session, auth) -> str:
    response = session.post(
        f"{zen_local.http_base}/v1/tenants",
        json={"name": "third-party", "displayName": "Third party"},
        headers={**auth, "X-Request-Id": str(uuid.uuid4())},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return response.json()["tenant"]["tenantId"]


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    problem = response.json()
    for member in PROBLEM_MEMBERS:
        assert member in problem, f"{member} missing from {problem}"
    assert problem["status"] == status
    return problem


def test_local_login_issues_bearer_tokens(login):
    token = login["token"]
    assert token["tokenType"] == "Bearer"
    assert token["accessToken"].count(".") == 2, "a JWT"
    assert token["refreshToken"].startswith("zrt.")
    assert token["expiresIn"] > 0
    assert login["user"]["username"] == "ada"
    assert login["user"]["platformAdmin"] is True


def test_clusters_are_created_listed_and_read(zen_local, session, auth, tenant_id):
    base = f"{zen_local.http_base}/v1/tenants/{tenant_id}/clusters"
    for name in ("edge-1", "edge-2", "core-1"):
        created = session.post(
            base,
            json={"name": name, "labels": {"tier": "edge" if name.startswith("edge") else "core"}},
            headers={**auth, "X-Request-Id": str(uuid.uuid4())},
            timeout=HTTP_TIMEOUT,
        )
        assert created.status_code == 200, created.text
        cluster = created.json()["cluster"]
        assert cluster["name"] == name
        assert cluster["version"] == "1", "int64 travels as a JSON string"
        assert cluster["status"] == "CLUSTER_STATUS_PROVISIONING"

    listed = session.get(base, params={"pageSize": 1, "namePrefix": "edge"}, headers=auth, timeout=HTTP_TIMEOUT)
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert len(page["clusters"]) == 1
    assert page["clusters"][0]["name"].startswith("edge")
    assert page["nextPageToken"]
    rest = session.get(
        base,
        params={"pageSize": 10, "namePrefix": "edge", "pageToken": page["nextPageToken"]},
        headers=auth,
        timeout=HTTP_TIMEOUT,
    ).json()
    names = {page["clusters"][0]["name"]} | {c["name"] for c in rest["clusters"]}
    assert names == {"edge-1", "edge-2"}

    one = page["clusters"][0]
    got = session.get(f"{base}/{one['clusterId']}", headers=auth, timeout=HTTP_TIMEOUT)
    assert got.status_code == 200, got.text
    assert got.json()["cluster"] == one


def test_errors_are_problem_documents(zen_local, session, auth, tenant_id):
    base = f"{zen_local.http_base}/v1/tenants/{tenant_id}/clusters"
    unauthenticated = assert_problem(session.get(base, timeout=HTTP_TIMEOUT), 401)
    assert unauthenticated["code"] == "UNAUTHENTICATED"

    no_route = assert_problem(session.get(f"{zen_local.http_base}/v1/nothing-here", timeout=HTTP_TIMEOUT), 404)
    assert no_route["type"] == "https://zen.dev/problems/route-not-found"

    wrong_method = session.put(base, headers=auth, timeout=HTTP_TIMEOUT)
    assert_problem(wrong_method, 405)
    assert {"GET", "POST"} <= {m.strip() for m in wrong_method.headers["Allow"].split(",")}

    refused = session.post(base, json={"name": "x-1"}, headers=auth, timeout=HTTP_TIMEOUT)
    no_request_id = assert_problem(refused, 400)
    assert no_request_id["reason"] == "REQUEST_ID_MISSING"
    # Refused before its body was read: the server drops that connection, and says so, so the
    # client opens a new one for the next request instead of racing the close.
    assert refused.headers.get("Connection", "").lower() == "close"

    bad_name = assert_problem(
        session.post(base, json={"name": "Bad Name"}, headers={**auth, "X-Request-Id": str(uuid.uuid4())},
                     timeout=HTTP_TIMEOUT),
        400,
    )
    assert bad_name["errors"][0]["field"] == "cluster.name"
    assert bad_name["instance"], "the request id"


def ws_url(server: ZenServer, tenant_id: str) -> str:
    return f"ws://127.0.0.1:{server.http_port}/v1/tenants/{tenant_id}/events:watch"


def test_event_watch_over_websocket_with_the_token_in_the_subprotocol(zen_local, login, tenant_id):
    token = login["token"]["accessToken"]
    ws = websocket.create_connection(
        ws_url(zen_local, tenant_id), subprotocols=["bearer", token], timeout=HTTP_TIMEOUT,
        http_no_proxy=["127.0.0.1"],
    )
    try:
        assert ws.getstatus() == 101
        assert ws.getsubprotocol() == "bearer", "the server selects `bearer`, never echoes the token"
        # Nothing happens in a fresh tenant: a heartbeat (every 15 s of silence) or nothing at
        # all within a short wait are both a healthy open stream; an error frame is not.
        ws.settimeout(3)
        try:
            frame = ws.recv()
        except websocket.WebSocketTimeoutException:
            frame = None
        if frame is not None:
            message = json.loads(frame)
            assert "error" not in message, message
            assert {"heartbeat", "event", "remediation"} & message.keys(), message
        assert ws.connected
    finally:
        ws.close(status=websocket.STATUS_NORMAL)
    assert not ws.connected


def test_event_watch_refuses_a_bad_token_with_an_error_frame_and_close_4401(zen_local, tenant_id):
    ws = websocket.create_connection(
        ws_url(zen_local, tenant_id), subprotocols=["bearer", "not-a-token"], timeout=HTTP_TIMEOUT,
        http_no_proxy=["127.0.0.1"],
    )
    try:
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_TEXT, (opcode, data)
        problem = json.loads(data)["error"]
        assert problem["status"] == 401 and problem["code"] == "UNAUTHENTICATED", problem
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE, (opcode, data)
        assert int.from_bytes(data[:2], "big") == 4401, data
    finally:
        ws.close()


def resolve_link_expression(expression: str, request_path: dict[str, str], body: dict) -> str:
    """An OpenAPI runtime expression of the two kinds the document uses."""
    if expression.startswith("$request.path."):
        return request_path[expression.removeprefix("$request.path.")]
    assert expression.startswith("$response.body#/"), expression
    value = body
    for token in expression.removeprefix("$response.body#/").split("/"):
        value = value[token.replace("~1", "/").replace("~0", "~")]
    return value


def test_a_client_follows_the_documents_links_from_each_create_to_what_it_made(
    zen_local, session, auth, tenant_id
):
    """The way a stateful client (or fuzzer) uses `links`: create, then every GET the create's
    response links to, its parameters taken from the response and the request as the link says."""
    document = session.get(f"{zen_local.http_base}/openapi.json", timeout=HTTP_TIMEOUT).json()
    by_id = {
        op["operationId"]: (path, method)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }
    creates = [
        ("/v1/tenants", {}, {"name": "linked"}),
        ("/v1/tenants/{tenant_id}/clusters", {"tenant_id": tenant_id}, {"name": "linked-cluster"}),
        (
            "/v1/tenants/{tenant_id}/webhookSources",
            {"tenant_id": tenant_id},
            {"name": "linked-source", "verification": {"scheme": "WEBHOOK_SCHEME_GITHUB"}},
        ),
    ]
    followed = 0
    for template, path_params, payload in creates:
        links = document["paths"][template]["post"]["responses"]["200"].get("links") or {}
        gets = {name: link for name, link in links.items() if by_id[link["operationId"]][1] == "get"}
        assert gets, f"POST {template} links to no GET"
        created = session.post(
            f"{zen_local.http_base}{template.format(**path_params)}",
            json=payload,
            headers={**auth, "X-Request-Id": str(uuid.uuid4())},
            timeout=HTTP_TIMEOUT,
        )
        assert created.status_code == 200, created.text
        body = created.json()
        for name, link in gets.items():
            target, _ = by_id[link["operationId"]]
            values = {
                parameter: resolve_link_expression(expression, path_params, body)
                for parameter, expression in link["parameters"].items()
            }
            read = session.get(
                f"{zen_local.http_base}{target.format(**values)}", headers=auth, timeout=HTTP_TIMEOUT
            )
            assert read.status_code == 200, f"{name}: {read.status_code} {read.text}"
            # What the link led to is what was made.
            assert any(
                isinstance(v, dict) and v.get("name") == payload["name"] for v in read.json().values()
            ), (name, read.text)
            followed += 1
    assert followed >= 3
