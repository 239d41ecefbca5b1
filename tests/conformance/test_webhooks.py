"""(w) Dynamic webhook sources, seen by the tools that post to them.

A `zen serve` with local login (and an explicit `ZEN_WEBHOOK_SECRET_KEYS` ring) gets a platform
admin who creates a tenant and invites a second person as the tenant's ADMIN; that tenant admin
creates the webhook sources over REST. Deliveries go to `POST /webhooks/{source_id}` signed by
each provider's own library, never by HMAC code written here:

* Standard Webhooks: PyPI `standardwebhooks` (`Webhook(secret).sign`); its ed25519 `v1a`
  signatures with `cryptography`;
* GitHub: npm `@octokit/webhooks-methods` `sign()`, run with node;
* Stripe: PyPI `stripe` (`WebhookSignature.generate_signature_header`, its test-signing helper);
* Slack: PyPI `slack_sdk` (`SignatureVerifier.generate_signature`);
* Shopify: npm `@shopify/shopify-api` (`test-helpers` `getHmac`, the value of
  `X-Shopify-Hmac-Sha256`);
* basic: `requests`' `HTTPBasicAuth`.

The one exception is Zen's own `zen-hmac` scheme, which no third party implements: its
signature is computed from the canonical string the contract documents, with Python's `hmac`.

Each scheme: the library's signature is accepted (202, the event is stored), a tampered body, a
wrong secret and (where signed) a stale timestamp get 401 with one generic problem, the same
delivery again is 200 DUPLICATE without a second event, and the same signed delivery id with
another body is 409 (GitHub's and Shopify's id headers are unsigned: a replay under a fresh id is
still a duplicate).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
import slack_sdk.signature as slack_signature
import standardwebhooks
import stripe
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from requests.auth import HTTPBasicAuth

from support import REPO_ROOT, ZenServer, clean_env, http_session, zen_binary

PASSWORD = "correct horse battery staple"
HTTP_TIMEOUT = 15
STALE = 10 * 60  # seconds: beyond the default tolerance of 5 minutes
FIXTURES = REPO_ROOT / "crates" / "webhook" / "tests" / "fixtures"
MAPPINGS = REPO_ROOT / "mappings"
# The server's ring: the first key is current. Both are test values.
SECRET_KEYS = (
    f"k2:{base64.b64encode(bytes(range(32))).decode()},"
    f"k1:{base64.b64encode(bytes(range(32, 64))).decode()}"
)


# -- the server, a tenant and its admin ---------------------------------------------------------


def add_local_user(server: ZenServer, username: str, *, admin: bool) -> None:
    cmd = [str(zen_binary()), "--data-dir", str(server.data_dir), "user", "add", "--username", username,
           "--email", f"{username}@example.test", "--password-stdin"]
    if admin:
        cmd.append("--admin")
    proc = subprocess.run(cmd, input=PASSWORD + "\n", env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    zen = ZenServer(
        data_dir=tmp_path_factory.mktemp("zen-webhooks") / "data",
        extra_args=["--local-login", "true"],
        env={"ZEN_WEBHOOK_SECRET_KEYS": SECRET_KEYS},
    ).start()
    try:
        add_local_user(zen, "root", admin=True)
        add_local_user(zen, "tess", admin=False)
        yield zen
    finally:
        code = zen.stop()
    assert code == 0, f"zen serve exited {code} after SIGTERM\n{zen.log()}"


@pytest.fixture(scope="module")
def http():
    return http_session()


def login(server: ZenServer, http, username: str) -> dict[str, str]:
    r = http.post(f"{server.http_base}/auth/local/login", json={"username": username, "password": PASSWORD},
                  timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']['accessToken']}"}


def mutating(auth: dict[str, str]) -> dict[str, str]:
    return {**auth, "X-Request-Id": str(uuid.uuid4())}


@pytest.fixture(scope="module")
def tenant(server, http) -> tuple[str, dict[str, str]]:
    """(tenant id, headers of the tenant's ADMIN), the admin being an ordinary user."""
    root = login(server, http, "root")
    r = http.post(f"{server.http_base}/v1/tenants", json={"name": "hooks", "displayName": "Hooks"},
                  headers=mutating(root), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    tenant_id = r.json()["tenant"]["tenantId"]
    r = http.post(f"{server.http_base}/v1/tenants/{tenant_id}/invites",
                  json={"email": "tess@example.test", "role": "ROLE_ADMIN"},
                  headers=mutating(root), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    invite = r.json()
    tess = login(server, http, "tess")
    r = http.post(f"{server.http_base}/v1/invites/{invite['invite']['inviteId']}:accept",
                  json={"token": invite["token"]}, headers=mutating(tess), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return tenant_id, tess


class Source:
    """A created webhook source and the secret shown at creation."""

    def __init__(self, server: ZenServer, http, tenant, body: dict, secret: str | None = None):
        self.server, self.http = server, http
        self.tenant_id, self.auth = tenant
        body = {"enabled": True, **body}  # proto3's default (false) would create it disabled
        if secret is not None:
            body["secret"] = secret
        r = http.post(f"{server.http_base}/v1/tenants/{self.tenant_id}/webhookSources", json=body,
                      headers=mutating(self.auth), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        created = r.json()
        self.resource = created["webhookSource"]
        self.id = self.resource["sourceId"]
        self.secret = created["secret"]
        if secret is not None:
            assert self.secret == secret
        assert "secret" not in self.resource, "the secret is never part of the resource"

    @property
    def url(self) -> str:
        return f"{self.server.http_base}/webhooks/{self.id}"

    def post(self, body: bytes, headers: dict[str, str] | None = None, **kwargs) -> requests.Response:
        return self.http.post(self.url, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                              timeout=HTTP_TIMEOUT, **kwargs)

    def events(self) -> list[dict]:
        r = self.http.get(f"{self.server.http_base}/v1/tenants/{self.tenant_id}/events",
                          params={"webhookSourceId": self.id, "pageSize": 100}, headers=self.auth,
                          timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json().get("events", [])

    def rotate(self, **body) -> dict:
        r = self.http.post(f"{self.server.http_base}/v1/tenants/{self.tenant_id}/webhookSources/{self.id}:rotateSecret",
                           json=body, headers=mutating(self.auth), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()


def scheme(name: str, **config) -> dict:
    return {"scheme": f"WEBHOOK_SCHEME_{name}", **config}


def payload(**fields) -> bytes:
    return json.dumps({"kind": "test", "nonce": uuid.uuid4().hex, **fields}, separators=(",", ":")).encode()


def tampered(body: bytes) -> bytes:
    return body.replace(b'"kind":"test"', b'"kind":"tEst"')


# -- what every answer must look like ------------------------------------------------------------

#: The problem members that must be identical for every verification failure.
GENERIC_MEMBERS = ("type", "title", "status", "detail", "code", "reason")


def assert_accepted(r: requests.Response) -> dict:
    assert r.status_code == 202, f"{r.status_code} {r.text}"
    answer = r.json()
    assert answer["outcome"] == "DELIVERY_OUTCOME_ACCEPTED", answer
    assert len(answer["eventIds"]) >= 1, answer
    return answer


def assert_duplicate(r: requests.Response, first: dict) -> None:
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    answer = r.json()
    assert answer["outcome"] == "DELIVERY_OUTCOME_DUPLICATE", answer
    assert answer.get("eventIds") == first["eventIds"], "a redelivery points at the event stored first"


def problem(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, f"{r.status_code} {r.text}"
    assert r.headers["content-type"] == "application/problem+json", r.headers
    return r.json()


def assert_refused(r: requests.Response) -> dict:
    """401 with the generic problem; returns its members that must not vary."""
    doc = problem(r, 401)
    return {k: doc.get(k) for k in GENERIC_MEMBERS}


def assert_all_refusals_alike(*responses: requests.Response) -> None:
    generic = [assert_refused(r) for r in responses]
    assert all(g == generic[0] for g in generic), f"a refusal must not say which part failed: {generic}"


def assert_stored_once(source: Source, first: dict) -> list[dict]:
    events = source.events()
    assert [e["eventId"] for e in events] == first["eventIds"], events
    return events


# -- npm libraries, called through node -----------------------------------------------------------


def node(script: str, *args: str) -> str:
    if shutil.which("node") is None:
        pytest.fail("node is required for the npm provider libraries")
    proc = subprocess.run(["node", "-e", script, "--", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, (
        f"node exited {proc.returncode} (npm ci installs the pinned libraries of package.json)\n{proc.stderr}"
    )
    return proc.stdout.strip()


def octokit_sign(secret: str, body: bytes) -> str:
    """`X-Hub-Signature-256` by @octokit/webhooks-methods."""
    return node(
        'import("@octokit/webhooks-methods").then(async ({sign}) =>'
        ' process.stdout.write(await sign(process.argv[1], process.argv[2])))',
        secret, body.decode(),
    )


def shopify_hmac(secret: str, body: bytes) -> str:
    """`X-Shopify-Hmac-Sha256` by @shopify/shopify-api's own test helper."""
    return node(
        'const {getHmac} = require("@shopify/shopify-api/test-helpers");'
        ' process.stdout.write(getHmac(process.argv[2], process.argv[1]))',
        secret, body.decode(),
    )


# -- Standard Webhooks ---------------------------------------------------------------------------


def sw_headers(secret: str, msg_id: str, body: bytes, at: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if at is None else at
    signature = standardwebhooks.Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_standard_webhooks(server, http, tenant):
    source = Source(server, http, tenant, {"name": "std-webhooks", "verification": scheme("STANDARD_WEBHOOKS")})
    assert source.secret.startswith("whsec_"), "Zen generates a Standard Webhooks secret"
    # The library accepts its own signature: the secret format is right.
    body = payload()
    headers = sw_headers(source.secret, "msg_1", body)
    standardwebhooks.Webhook(source.secret).verify(body.decode(), headers)

    first = assert_accepted(source.post(body, headers))
    assert_stored_once(source, first)
    other = standardwebhooks.Webhook("whsec_" + base64.b64encode(b"another key, 24 bytes!!!").decode())
    ts = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=timezone.utc)
    wrong_secret_headers = {**headers, "webhook-signature": other.sign("msg_1", ts, body.decode())}
    assert_all_refusals_alike(
        source.post(tampered(body), headers),
        source.post(body, {**headers, "webhook-id": "msg_2"}),
        source.post(body, wrong_secret_headers),
        source.post(body, sw_headers(source.secret, "msg_3", body, at=int(time.time()) - STALE)),
        source.post(body, {k: v for k, v in headers.items() if k != "webhook-signature"}),
    )
    assert_duplicate(source.post(body, headers), first)
    replay = payload()
    problem(source.post(replay, sw_headers(source.secret, "msg_1", replay)), 409)
    assert_stored_once(source, first)
    event = source.events()[0]
    assert event["sourceEventId"] == "msg_1"
    assert event["webhookSourceId"] == source.id
    assert event["source"] == "EVENT_SOURCE_WEBHOOK"


def test_standard_webhooks_ed25519(server, http, tenant):
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    whpk = "whpk_" + base64.b64encode(public).decode()
    source = Source(server, http, tenant, {"name": "std-webhooks-ed25519", "verification": scheme("STANDARD_WEBHOOKS")},
                    secret=whpk)

    def signed(msg_id: str, body: bytes, key=private, at: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if at is None else at)
        sig = key.sign(f"{msg_id}.{ts}.".encode() + body)
        return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": "v1a," + base64.b64encode(sig).decode()}

    body = payload()
    first = assert_accepted(source.post(body, signed("msg_a", body)))
    assert_all_refusals_alike(
        source.post(tampered(body), signed("msg_a", body)),
        source.post(body, signed("msg_b", body, key=Ed25519PrivateKey.generate())),
        source.post(body, signed("msg_c", body, at=int(time.time()) - STALE)),
    )
    assert_duplicate(source.post(body, signed("msg_a", body)), first)
    other = payload()
    problem(source.post(other, signed("msg_a", other)), 409)
    assert_stored_once(source, first)


# -- GitHub --------------------------------------------------------------------------------------


def test_github(server, http, tenant):
    source = Source(server, http, tenant, {"name": "github", "verification": scheme("GITHUB")})
    body = json.dumps(json.loads((FIXTURES / "github-dependabot-alert.json").read_text()), separators=(",", ":")).encode()
    delivery = str(uuid.uuid4())
    headers = {"X-GitHub-Event": "dependabot_alert", "X-GitHub-Delivery": delivery,
               "X-Hub-Signature-256": octokit_sign(source.secret, body)}
    assert headers["X-Hub-Signature-256"].startswith("sha256=")
    first = assert_accepted(source.post(body, headers))
    assert_all_refusals_alike(
        source.post(tampered(body) + b" ", headers),
        source.post(body, {**headers, "X-Hub-Signature-256": octokit_sign("not-the-secret-at-all", body)}),
        source.post(body, {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}),
    )
    assert_duplicate(source.post(body, headers), first)
    # X-GitHub-Delivery is not signed: a captured request replayed under a fresh id is still
    # the same delivery, so replay protection keys on the signed body instead.
    assert_duplicate(source.post(body, {**headers, "X-GitHub-Delivery": str(uuid.uuid4())}), first)
    assert_stored_once(source, first)


# -- Stripe --------------------------------------------------------------------------------------


def stripe_event(event_id: str, amount: int = 2000) -> bytes:
    return json.dumps({"id": event_id, "object": "event", "type": "charge.dispute.created",
                       "data": {"object": {"id": "dp_1", "amount": amount, "kind": "test"}}},
                      separators=(",", ":")).encode()


def stripe_header(body: bytes, secret: str, at: int | None = None) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=at)
    return {"Stripe-Signature": header}


def test_stripe(server, http, tenant):
    secret = "whsec_" + uuid.uuid4().hex  # Stripe generates the secret; the tenant brings it
    source = Source(server, http, tenant, {"name": "stripe", "verification": scheme("STRIPE")}, secret=secret)
    body = stripe_event("evt_1")
    at = int(time.time())
    headers = stripe_header(body, secret, at)
    stripe.WebhookSignature.verify_header(body.decode(), headers["Stripe-Signature"], secret, tolerance=300)
    first = assert_accepted(source.post(body, headers))
    assert_all_refusals_alike(
        source.post(stripe_event("evt_1", amount=1), headers),
        source.post(body, stripe_header(body, "whsec_" + uuid.uuid4().hex)),
        source.post(body, stripe_header(body, secret, at=int(time.time()) - STALE)),
    )
    # Several v1 signatures (Stripe sends one per secret while a secret is being rolled).
    two = stripe_header(body, "whsec_" + uuid.uuid4().hex, at)["Stripe-Signature"] + "," + \
        headers["Stripe-Signature"].split(",", 1)[1]
    assert_duplicate(source.post(body, {"Stripe-Signature": two}), first)
    assert_duplicate(source.post(body, headers), first)
    other = stripe_event("evt_1", amount=3000)
    problem(source.post(other, stripe_header(other, secret)), 409)
    events = assert_stored_once(source, first)
    assert events[0]["sourceEventId"] == "evt_1", "Stripe's delivery id is the event's id"


# -- Slack ---------------------------------------------------------------------------------------


def slack_headers(secret: str, body: bytes, at: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if at is None else at)
    signature = slack_signature.SignatureVerifier(secret).generate_signature(timestamp=ts, body=body.decode())
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}


def test_slack(server, http, tenant):
    secret = uuid.uuid4().hex  # Slack's signing secret, brought by the tenant
    source = Source(server, http, tenant, {"name": "slack", "verification": scheme("SLACK")}, secret=secret)
    body = payload(type="event_callback")
    headers = slack_headers(secret, body)
    assert slack_signature.SignatureVerifier(secret).is_valid_request(body.decode(), headers)
    first = assert_accepted(source.post(body, headers))
    assert_all_refusals_alike(
        source.post(tampered(body), headers),
        source.post(body, slack_headers(uuid.uuid4().hex, body)),
        source.post(body, slack_headers(secret, body, at=int(time.time()) - STALE)),
    )
    assert_duplicate(source.post(body, headers), first)
    assert_stored_once(source, first)


def test_slack_url_verification_is_answered_with_the_challenge(server, http, tenant):
    secret = uuid.uuid4().hex
    source = Source(server, http, tenant, {"name": "slack-challenge", "verification": scheme("SLACK")}, secret=secret)
    challenge = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    body = json.dumps({"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge, "type": "url_verification"}).encode()
    r = source.post(body, slack_headers(secret, body))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["challenge"] == challenge, "Slack reads `challenge` from the JSON answer"
    assert answer["outcome"] == "DELIVERY_OUTCOME_CHALLENGE"
    assert source.events() == [], "a handshake stores nothing"
    # Unsigned, the challenge is not echoed.
    assert_refused(source.post(body, {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=00"}))


# -- Shopify -------------------------------------------------------------------------------------


def test_shopify(server, http, tenant):
    secret = "shpss_" + uuid.uuid4().hex  # the app's client secret
    source = Source(server, http, tenant, {"name": "shopify", "verification": scheme("SHOPIFY")}, secret=secret)
    body = payload(topic="orders/create")
    webhook_id = str(uuid.uuid4())
    headers = {"X-Shopify-Topic": "orders/create", "X-Shopify-Shop-Domain": "shop.myshopify.com",
               "X-Shopify-Webhook-Id": webhook_id, "X-Shopify-Hmac-Sha256": shopify_hmac(secret, body)}
    first = assert_accepted(source.post(body, headers))
    assert_all_refusals_alike(
        source.post(tampered(body), headers),
        source.post(body, {**headers, "X-Shopify-Hmac-Sha256": shopify_hmac("shpss_" + uuid.uuid4().hex, body)}),
    )
    assert_duplicate(source.post(body, headers), first)
    # X-Shopify-Webhook-Id is not signed either: a replay under a fresh id is a duplicate.
    assert_duplicate(source.post(body, {**headers, "X-Shopify-Webhook-Id": str(uuid.uuid4())}), first)
    assert_stored_once(source, first)


# -- zen-hmac (Zen's own scheme) -----------------------------------------------------------------


def zen_headers(secret: str, body: bytes, nonce: str, at: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if at is None else at)
    # The contract's canonical string: "{timestamp}.{nonce}.{body}", lower-case hex HMAC-SHA256.
    signature = hmac.new(secret.encode(), f"{ts}.{nonce}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": signature}


def test_zen_hmac(server, http, tenant):
    source = Source(server, http, tenant, {"name": "zen-hmac", "verification": scheme("ZEN_HMAC")})
    body = payload()
    nonce = str(uuid.uuid4())
    headers = zen_headers(source.secret, body, nonce)
    first = assert_accepted(source.post(body, headers))
    assert_all_refusals_alike(
        source.post(tampered(body), headers),
        source.post(body, zen_headers("not-the-secret-0123456", body, nonce)),
        source.post(body, zen_headers(source.secret, body, str(uuid.uuid4()), at=int(time.time()) - STALE)),
        source.post(body, {**headers, "X-Nonce": str(uuid.uuid4())}),
    )
    assert_duplicate(source.post(body, headers), first)
    other = payload()
    problem(source.post(other, zen_headers(source.secret, other, nonce)), 409)
    assert_stored_once(source, first)


# -- generic HMAC, configured as Slack's format and signed by slack_sdk -------------------------


def test_generic_hmac(server, http, tenant):
    secret = uuid.uuid4().hex
    config = {"genericHmac": {
        "signatureHeader": "X-Slack-Signature",
        "algorithm": "HMAC_ALGORITHM_SHA256",
        "encoding": "SIGNATURE_ENCODING_HEX",
        "signaturePrefix": "v0=",
        "signedContent": "v0:{timestamp}:{body}",
        "timestampHeader": "X-Slack-Request-Timestamp",
    }}
    source = Source(server, http, tenant, {"name": "generic", "verification": scheme("GENERIC_HMAC", **config)},
                    secret=secret)
    body = payload()
    headers = slack_headers(secret, body)
    first = assert_accepted(source.post(body, headers))
    assert_all_refusals_alike(
        source.post(tampered(body), headers),
        source.post(body, slack_headers(uuid.uuid4().hex, body)),
        source.post(body, slack_headers(secret, body, at=int(time.time()) - STALE)),
    )
    assert_duplicate(source.post(body, headers), first)
    assert_stored_once(source, first)


def test_generic_hmac_settings_are_checked(server, http, tenant):
    tenant_id, auth = tenant
    body = {"name": "generic-bad", "enabled": True, "verification": scheme("GENERIC_HMAC", genericHmac={
        "signatureHeader": "X-Sig", "signedContent": "{timestamp}.{body}"})}
    r = http.post(f"{server.http_base}/v1/tenants/{tenant_id}/webhookSources", json=body, headers=mutating(auth),
                  timeout=HTTP_TIMEOUT)
    doc = problem(r, 400)
    # Field paths are in the JSON spelling (signedContent) or the proto one (signed_content).
    assert any("signedcontent" in e["field"].replace("_", "").lower() for e in doc.get("errors", [])), doc


# -- static credentials --------------------------------------------------------------------------


def test_bearer(server, http, tenant):
    source = Source(server, http, tenant, {"name": "bearer", "verification": scheme("BEARER")})
    body = payload()
    first = assert_accepted(source.post(body, {"Authorization": f"Bearer {source.secret}"}))
    assert_all_refusals_alike(
        source.post(body, {"Authorization": f"Bearer {source.secret[:-1]}"}),
        source.post(body, {"Authorization": "Bearer not-the-secret-0123456789"}),
        source.post(body),
    )
    assert_duplicate(source.post(body, {"Authorization": f"Bearer {source.secret}"}), first)
    assert_stored_once(source, first)


def test_basic(server, http, tenant):
    source = Source(server, http, tenant, {"name": "basic", "verification": scheme("BASIC", basic={"username": "hooks"})})
    body = payload()
    first = assert_accepted(source.post(body, auth=HTTPBasicAuth("hooks", source.secret)))
    assert_all_refusals_alike(
        source.post(body, auth=HTTPBasicAuth("hooks", "not-the-secret-0123456789")),
        source.post(body, auth=HTTPBasicAuth("intruder", source.secret)),
        source.post(body),
    )
    assert_duplicate(source.post(body, auth=HTTPBasicAuth("hooks", source.secret)), first)
    assert_stored_once(source, first)


# -- rotation ------------------------------------------------------------------------------------


def test_rotation_overlap_then_immediate_expiry(server, http, tenant):
    source = Source(server, http, tenant, {"name": "rotating", "verification": scheme("STANDARD_WEBHOOKS")})
    old = source.secret
    rotated = source.rotate()  # default overlap: the old secret keeps verifying
    new = rotated["secret"]
    assert new != old and new.startswith("whsec_")
    assert rotated["secretId"] and rotated["oldSecretExpireTime"]
    secrets = rotated["webhookSource"]["secrets"]
    assert len(secrets) == 2 and sum("expireTime" in s for s in secrets) == 1, secrets
    for secret in (old, new):
        body = payload()
        assert_accepted(source.post(body, sw_headers(secret, f"msg_{uuid.uuid4().hex}", body)))
    # One header signed with both (the Standard Webhooks way to roll): accepted too.
    body = payload()
    msg_id = f"msg_{uuid.uuid4().hex}"
    at = int(time.time())
    a, b = sw_headers(old, msg_id, body, at), sw_headers(new, msg_id, body, at)
    assert_accepted(source.post(body, {**b, "webhook-signature": f"{a['webhook-signature']} {b['webhook-signature']}"}))

    newest = source.rotate(oldSecretTtl="0s")["secret"]
    body = payload()
    assert_refused(source.post(body, sw_headers(new, f"msg_{uuid.uuid4().hex}", body)))
    body = payload()
    assert_accepted(source.post(body, sw_headers(newest, f"msg_{uuid.uuid4().hex}", body)))


# -- JSON Schema and mapping ---------------------------------------------------------------------


def test_json_schema_failures_are_400_with_the_schema_errors(server, http, tenant):
    schema = {"type": "object", "required": ["alert"],
              "properties": {"alert": {"type": "object", "required": ["number"],
                                       "properties": {"number": {"type": "integer"}}}}}
    source = Source(server, http, tenant, {"name": "schema", "verification": scheme("ZEN_HMAC"), "jsonSchema": schema})
    good = json.dumps({"alert": {"number": 1}}).encode()
    assert_accepted(source.post(good, zen_headers(source.secret, good, str(uuid.uuid4()))))
    bad = json.dumps({"alert": {"number": "one"}}).encode()
    doc = problem(source.post(bad, zen_headers(source.secret, bad, str(uuid.uuid4()))), 400)
    assert doc.get("reason") == "SCHEMA_VALIDATION_FAILED", doc
    errors = doc.get("errors", [])
    assert errors and any("/alert/number" in e["field"] for e in errors), doc
    assert any("integer" in e["message"] for e in errors), doc
    assert len(source.events()) == 1, "the invalid payload stored nothing"


def test_the_falco_preset_maps_severity_type_and_resource(server, http, tenant):
    mapping = json.loads((MAPPINGS / "falco.json").read_text())
    source = Source(server, http, tenant, {"name": "falco", "verification": scheme("BEARER"), "mapping": mapping})
    got = http.get(f"{server.http_base}/v1/tenants/{source.tenant_id}/webhookSources/{source.id}",
                   headers=source.auth, timeout=HTTP_TIMEOUT)
    assert got.status_code == 200, got.text
    assert got.json()["webhookSource"]["mapping"] == mapping, "the preset is the contract's EventMapping JSON"
    body = (FIXTURES / "falco.json").read_bytes()
    assert_accepted(source.post(body, {"Authorization": f"Bearer {source.secret}"}))
    [event] = source.events()
    assert event["type"] == "Terminal shell in container"
    assert event["severity"] == "SEVERITY_LOW", "Falco's Notice"
    assert event["category"] == "EVENT_CATEGORY_SECURITY"
    assert event["resource"]["namespace"] == "shop"
    assert event["resource"]["name"] == "checkout-7d9f8b6c5-x2x9q"
    assert event["resource"]["kind"] == "Pod"
    assert event["detectTime"].startswith("2026-11-23T10:31:12")
    assert event["sourceEventId"] == "6a4c1f3e-7b2d-4e8f-9a0b-1c2d3e4f5a6b"


def test_the_github_preset_maps_each_alert_kind(server, http, tenant):
    mapping = json.loads((MAPPINGS / "github-security-alerts.json").read_text())
    source = Source(server, http, tenant, {"name": "github-alerts", "verification": scheme("GITHUB"), "mapping": mapping})
    expected = {
        "github-code-scanning-alert.json": ("js/sql-injection", "SEVERITY_CRITICAL"),
        "github-dependabot-alert.json": ("GHSA-35jh-r3h4-6jhm", "SEVERITY_HIGH"),
        "github-secret-scanning-alert.json": ("github_personal_access_token", "SEVERITY_HIGH"),
    }
    for name in expected:
        body = (FIXTURES / name).read_bytes()
        assert_accepted(source.post(body, {"X-GitHub-Delivery": str(uuid.uuid4()),
                                           "X-Hub-Signature-256": octokit_sign(source.secret, body)}))
    got = {(e["type"], e["severity"]) for e in source.events()}
    assert got == set(expected.values()), got


# -- the rest of the contract --------------------------------------------------------------------


def test_unknown_source_is_404(server, http):
    r = http.post(f"{server.http_base}/webhooks/{uuid.uuid4()}", data=b"{}",
                  headers={"Content-Type": "application/json"}, timeout=HTTP_TIMEOUT)
    problem(r, 404)


def test_rate_limit_is_429_with_retry_after(server, http, tenant):
    source = Source(server, http, tenant, {"name": "limited", "verification": scheme("BEARER"), "rateLimitPerSecond": 2})
    auth = {"Authorization": f"Bearer {source.secret}"}
    # Ten distinct deliveries in well under three seconds: at most 2 per second get through.
    answers = [source.post(payload(), auth) for _ in range(10)]
    codes = [r.status_code for r in answers]
    assert set(codes) <= {202, 429}, codes
    assert 2 <= codes.count(202) <= 6, codes
    limited = [r for r in answers if r.status_code == 429]
    doc = problem(limited[0], 429)
    assert doc.get("reason") == "RATE_LIMITED", doc
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert len(source.events()) == codes.count(202), "nothing refused was stored"


def test_too_large_and_invalid_json_bodies(server, http, tenant):
    source = Source(server, http, tenant, {"name": "limits", "verification": scheme("BEARER")})
    auth = {"Authorization": f"Bearer {source.secret}"}
    # Just past the default 1 MiB limit: the gateway answers 413 from Content-Length before
    # reading the body and closes, so a much larger upload can still be in flight and see a
    # reset instead of the answer (docs/GATEWAY.md, "Limits"); this size is sent in full first.
    problem(source.post(b"{" + b" " * ((1 << 20) + 1024) + b"}", auth), 413)
    problem(source.post(b"{not json", auth), 400)
    assert source.events() == []


def test_a_body_that_is_not_json_media_is_415(server, http, tenant):
    source = Source(server, http, tenant, {"name": "media", "verification": scheme("BEARER")})
    auth = {"Authorization": f"Bearer {source.secret}"}
    problem(source.post(b"kind=test", {**auth, "Content-Type": "application/x-www-form-urlencoded"}), 415)
    problem(source.post(b"kind=test", {**auth, "Content-Type": "text/plain"}), 415)
    assert source.events() == []


def test_a_disabled_source_refuses_deliveries(server, http, tenant):
    source = Source(server, http, tenant, {"name": "disabled", "verification": scheme("BEARER"), "enabled": False})
    doc = problem(source.post(payload(), {"Authorization": f"Bearer {source.secret}"}), 400)
    assert doc["code"] == "FAILED_PRECONDITION" and doc.get("reason") == "SOURCE_DISABLED", doc


def test_secrets_are_shown_once_and_sealed_at_rest(server, http, tenant):
    source = Source(server, http, tenant, {"name": "sealed", "verification": scheme("GITHUB")})
    r = http.get(f"{server.http_base}/v1/tenants/{source.tenant_id}/webhookSources/{source.id}",
                 headers=source.auth, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    assert source.secret not in r.text
    assert [set(s) & {"secretId", "createTime"} for s in r.json()["webhookSource"]["secrets"]] == [{"secretId", "createTime"}]
    needle = source.secret.encode()
    leaks = [p for p in Path(server.data_dir).rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert not leaks, f"the secret is stored in clear in {leaks}"
    assert source.secret not in server.log(), "the secret is logged"


# -- two replicas on one PostgreSQL and one Redis ------------------------------------------------


def psql(url: str, sql: str) -> None:
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, capture_output=True,
                   text=True, timeout=30)


@pytest.fixture
def shared_backends():
    """(database URL, Redis URL): a fresh PostgreSQL database, dropped afterwards, and Redis."""
    admin = os.environ.get("ZEN_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("ZEN_TEST_REDIS_URL", "redis://127.0.0.1:6379")
    reason = None
    if shutil.which("psql") is None:
        reason = "psql is not installed"
    else:
        try:
            psql(admin, "SELECT 1")
        except (subprocess.SubprocessError, OSError) as error:
            reason = f"PostgreSQL at {admin} is not reachable: {getattr(error, 'stderr', error)}"
    host, _, port = redis_url.removeprefix("redis://").split("/")[0].partition(":")
    try:
        socket.create_connection((host, int(port or 6379)), timeout=2).close()
    except OSError as error:
        reason = reason or f"Redis at {redis_url} is not reachable: {error}"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"zen_webhooks_{uuid.uuid4().hex[:12]}"
    psql(admin, f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}", redis_url
    finally:
        psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_replicas_share_replay_protection_and_rotation(tmp_path, http, shared_backends):
    database_url, redis_url = shared_backends
    shared = ["--local-login", "true", "--database-url", database_url, "--redis-url", redis_url]
    env = {"ZEN_WEBHOOK_SECRET_KEYS": SECRET_KEYS}
    a = ZenServer(data_dir=tmp_path / "a", extra_args=shared, env=env).start()
    b = None
    try:
        b = ZenServer(data_dir=tmp_path / "b", extra_args=shared, env=env).start()
        cmd = [str(zen_binary()), "--data-dir", str(a.data_dir), "--database-url", database_url, "user", "add",
               "--username", "root", "--email", "root@example.test", "--password-stdin", "--admin"]
        proc = subprocess.run(cmd, input=PASSWORD + "\n", env=clean_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        root = login(a, http, "root")
        r = http.post(f"{a.http_base}/v1/tenants", json={"name": "replicas"}, headers=mutating(root),
                      timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        source = Source(a, http, (r.json()["tenant"]["tenantId"], root),
                        {"name": "replicated", "verification": scheme("ZEN_HMAC")})
        on_b = f"{b.http_base}/webhooks/{source.id}"

        body = payload()
        nonce = str(uuid.uuid4())
        headers = {"Content-Type": "application/json", **zen_headers(source.secret, body, nonce)}
        first = assert_accepted(source.post(body, headers))
        assert_duplicate(http.post(on_b, data=body, headers=headers, timeout=HTTP_TIMEOUT), first)
        other = payload()
        replay = {"Content-Type": "application/json", **zen_headers(source.secret, other, nonce)}
        problem(http.post(on_b, data=other, headers=replay, timeout=HTTP_TIMEOUT), 409)
        assert_stored_once(source, first)

        # A rotation made through replica A applies to the next request on replica B.
        old = source.secret
        new = source.rotate(oldSecretTtl="0s")["secret"]
        body = payload()
        stale_secret = {"Content-Type": "application/json", **zen_headers(old, body, str(uuid.uuid4()))}
        assert_refused(http.post(on_b, data=body, headers=stale_secret, timeout=HTTP_TIMEOUT))
        fresh = {"Content-Type": "application/json", **zen_headers(new, body, str(uuid.uuid4()))}
        assert_accepted(http.post(on_b, data=body, headers=fresh, timeout=HTTP_TIMEOUT))
        assert len(source.events()) == 2
    finally:
        codes = [(s, s.stop()) for s in (b, a) if s is not None]
    for s, code in codes:
        assert code == 0, f"zen serve exited {code}\n{s.log()}"
