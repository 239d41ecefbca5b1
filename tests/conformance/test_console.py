"""The web console in a real browser: Debian's chromium driven by Playwright, against the real
`zen serve` on SQLite with the in-memory cache, and on PostgreSQL with Redis.

The scenario is the one an operator walks: sign in; create a tenant; register and enroll a
cluster and run `zen agent run`, whose events appear live without a reload; register a GitHub
source from its preset and deliver an event signed by GitHub's own library
(`@octokit/webhooks-methods`); invite people; propose a remediation from an event, approve it as
two other people in two browser contexts and watch the agent execute and verify it; verify the
audit chain; a viewer is offered no approve button and a request forged from the viewer's own
session is refused; sign out ends the server session.

Along the way: axe-core (npm, pinned) runs on every page (no serious or critical violation), the
browser reports no Content-Security-Policy violation and no page error, an event whose title and
payload carry markup renders as text, and a screenshot of every page is saved under
$ZEN_TEST_ARTIFACTS (default <repo>/test-artifacts)/console/<backend>/.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support import REPO_ROOT, ZenServer, clean_env, free_port, http_session, zen_binary

PASSWORD = "a long password here"
TIMEOUT_MS = 20_000
AXE = REPO_ROOT / "node_modules" / "axe-core" / "axe.min.js"
FIXTURES = REPO_ROOT / "crates" / "webhook" / "tests" / "fixtures"
ARTIFACTS = Path(os.environ.get("ZEN_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "console"
XSS = '<script>window.__xss = 1</script>"><img src=x onerror="window.__xss = 2">'
APPLY_HOOK = """#!/bin/sh
cat > /dev/null
echo '{"success": true, "message": "applied", "probes": [{"name": "ready", "success": true, "duration_ms": 5, "message": "3/3 ready"}]}'
"""


def unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def chromium() -> str:
    path = os.environ.get("ZEN_CHROMIUM") or shutil.which("chromium")
    if not path:
        unavailable("chromium is not installed (scripts/lib.sh ensure_chromium installs it)")
    return path


# -- the stack: one zen serve per backend ---------------------------------------------------------


def psql(url: str, sql: str) -> None:
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, capture_output=True,
                   text=True, timeout=30)


class Stack:
    def __init__(self, name: str, server: ZenServer, global_args: list[str], env: dict[str, str], workdir: Path):
        self.name, self.server, self.global_args, self.env, self.workdir = name, server, global_args, env, workdir
        self.base = server.http_base
        self.shots = ARTIFACTS / name
        self.shots.mkdir(parents=True, exist_ok=True)

    def zen(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        cmd = [str(zen_binary()), "--data-dir", str(self.server.data_dir), *self.global_args, *args]
        proc = subprocess.run(cmd, input=stdin, env=clean_env(**self.env), capture_output=True, text=True,
                              timeout=timeout, cwd=self.workdir)
        assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def add_user(self, name: str, admin: bool = False) -> None:
        self.zen("user", "add", "--username", name, "--email", f"{name}@example.test", "--password-stdin",
                 *(["--admin"] if admin else []), stdin=PASSWORD + "\n")


@pytest.fixture(scope="module", params=["sqlite", "postgres-redis"])
def stack(request, tmp_path_factory):
    if not AXE.exists():
        unavailable(f"{AXE} is missing: npm ci installs the pinned axe-core")
    chromium()
    workdir = tmp_path_factory.mktemp(f"console-{request.param}")
    global_args: list[str] = []
    env: dict[str, str] = {}
    database = None
    admin_url = os.environ.get("ZEN_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    if request.param == "postgres-redis":
        if shutil.which("psql") is None:
            unavailable("psql is not installed")
        try:
            psql(admin_url, "SELECT 1")
        except (subprocess.SubprocessError, OSError) as error:
            unavailable(f"PostgreSQL at {admin_url} is not reachable: {error}")
        database = f"zen_console_{uuid.uuid4().hex[:12]}"
        psql(admin_url, f'CREATE DATABASE "{database}"')
        global_args = ["--database-url", f"{admin_url.rpartition('/')[0]}/{database}"]
        env = {"ZEN_REDIS_URL": os.environ.get("ZEN_TEST_REDIS_URL", "redis://127.0.0.1:6379")}
    server = ZenServer(data_dir=workdir / "data", extra_args=["--local-login", "true", *global_args], env=env)
    # The users exist before the first start (the CLI opens the same database).
    stack = Stack(request.param, server, global_args, env, workdir)
    stack.zen("migrate")
    for name in ("alice", "bob", "carol", "dave"):
        stack.add_user(name, admin=name == "alice")
    server.start()
    stack.base = server.http_base
    try:
        yield stack
    finally:
        code = server.stop()
        if database:
            psql(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert code == 0, f"zen serve exited {code}\n{server.log()}"


@pytest.fixture(scope="module")
def browser():
    """One chromium for the module (Playwright's sync API allows one driver at a time)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Person:
    """One person's browser context, recording what the browser reported."""

    def __init__(self, stack: Stack, browser, username: str, color_scheme: str = "light"):
        self.stack, self.username = stack, username
        self.context = browser.new_context(base_url=stack.base, color_scheme=color_scheme,
                                           viewport={"width": 1280, "height": 800})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.csp: list[str] = []
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.csp.append(message.text)

    def sign_in(self, path: str = "/") -> "Person":
        self.page.goto(path)
        self.page.fill("#username", self.username)
        self.page.fill("#password", PASSWORD)
        self.page.click("button:has-text('Sign in')")
        self.page.wait_for_selector("button:has-text('Sign out')")
        return self

    def tab(self, label: str) -> None:
        self.page.click(f"nav.tabs >> text={label}")
        self.page.wait_for_selector("main h2")

    def shown_once(self, label: str) -> str:
        return self.page.inner_text(f"[data-testid=once-{label}]").strip()

    def check(self, name: str) -> None:
        """Screenshot, axe-core (no serious or critical violation), nothing reported so far."""
        self.page.wait_for_load_state("networkidle")
        self.page.screenshot(path=str(self.stack.shots / f"{name}.png"), full_page=True)
        # Evaluated by the driver (not a page script), so the page's CSP stays as strict as served.
        self.page.evaluate(AXE.read_text())
        result = self.page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
            ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
            ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"
        )
        assert result == [], f"axe-core on {name} ({self.username}): {json.dumps(result, indent=1)}"
        assert self.csp == [], f"CSP violations on {name}: {self.csp}"
        assert self.errors == [], f"page errors on {name}: {self.errors}"

    def close(self) -> None:
        self.context.close()


def octokit_sign(secret: str, body: bytes) -> str:
    proc = subprocess.run(
        ["node", "-e", 'import("@octokit/webhooks-methods").then(async ({sign}) =>'
         ' process.stdout.write(await sign(process.argv[1], process.argv[2])))', "--", secret, body.decode()],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def accept_invite(person: Person, invite: tuple[str, str]) -> None:
    page = person.page
    page.goto("/console/")
    page.fill("#invite-id", invite[0])
    page.fill("#invite-token", invite[1])
    page.click("button:has-text('Accept')")
    page.wait_for_function("() => !document.querySelector('#invite-id').value")


# -- the walk-through ------------------------------------------------------------------------------


def test_operator_walkthrough(stack, browser):
    started = time.monotonic()
    alice = Person(stack, browser, "alice").sign_in()
    page = alice.page
    alice.check("01-tenants")

    # A tenant, created from the console.
    page.fill("#tenant-name", f"acme-{stack.name}")
    page.fill("#tenant-display", "Acme")
    page.click("button:has-text('Create tenant')")
    page.wait_for_url("**/console/t/*/events")
    tenant = page.url.split("/console/t/")[1].split("/")[0]
    page.wait_for_selector("[data-testid=watch-status][data-state=live]")

    # A cluster, registered and enrolled: the bootstrap command is shown once.
    alice.tab("Clusters")
    page.fill("#cluster-name", "prod-eu-1")
    page.click("button:has-text('Register')")
    page.click("button[aria-label='Enroll prod-eu-1']")
    command = alice.shown_once("command")
    alice.check("02-clusters-enroll")
    page.click("[data-testid=shown-once] >> text=Done")
    argv = shlex.split(command)
    assert argv[:3] == ["zen", "agent", "bootstrap"], command
    agent_dir = stack.workdir / "agent"
    stack.zen(*argv[1:], "--dir", str(agent_dir))

    # The agent's events appear live on the open events page, without a reload.
    alice.tab("Live events")
    page.wait_for_selector("[data-testid=watch-status][data-state=live]")
    events = stack.workdir / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in (
        {"id": "trivy-0001", "source": "trivy", "severity": "critical", "type": "vulnerability",
         "title": "CVE-2026-0001 in openssl",
         "resource": {"api_version": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "api"},
         "details": {"package": "openssl", "installed": "3.0.1", "fixed": "3.0.9"}},
        # Markup in a title and a payload, as a hostile tool could send.
        {"id": "probe-0002", "source": "custom", "severity": "low", "type": "injection-probe",
         "title": f"Injection probe {XSS}", "details": {"note": XSS}},
    )))
    hook = stack.workdir / "apply.sh"
    hook.write_text(APPLY_HOOK)
    hook.chmod(0o755)
    agent = subprocess.Popen(
        [str(zen_binary()), "agent", "run", "--dir", str(agent_dir), "--input", str(events), "--follow",
         "--exec-hook", str(hook)],
        env=clean_env(), cwd=stack.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        walk(stack, browser, alice, tenant, started)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        alice.close()


def walk(stack: Stack, browser, alice: Person, tenant: str, started: float) -> None:
    page = alice.page
    page.locator("[data-testid=events-table] tbody tr", has_text="CVE-2026-0001").wait_for()
    row = page.locator("[data-testid=events-table] tbody tr", has_text="Injection probe")
    row.wait_for()
    # Markup in a title is text: no script ran, no element was made from it.
    assert XSS in row.inner_text()
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("[data-testid=events-table] img").count() == 0
    row.locator("a").click()
    detail = page.locator("[data-testid=event-detail]")
    assert json.loads(detail.locator("[data-testid=raw-payload]").inner_text())["note"] == XSS
    assert page.evaluate("() => window.__xss") is None
    alice.check("03-events-detail")

    # A GitHub source from its preset; the URL and secret are shown once.
    alice.tab("Webhook sources")
    page.select_option("#preset", "github")
    page.click("button:has-text('Create source')")
    url, secret = alice.shown_once("url"), alice.shown_once("secret")
    alice.check("04-webhook-source-created")
    page.click("[data-testid=shown-once] >> text=Done")
    path = "/webhooks/" + url.rsplit("/webhooks/", 1)[1]
    body = json.dumps(json.loads((FIXTURES / "github-dependabot-alert.json").read_text()),
                      separators=(",", ":")).encode()
    alice.tab("Live events")
    page.wait_for_selector("[data-testid=watch-status][data-state=live]")
    before = page.locator("[data-testid=events-table] tbody tr").count()
    r = http_session().post(stack.base + path, data=body, timeout=15, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "dependabot_alert",
        "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": octokit_sign(secret, body)})
    assert r.status_code == 202, r.text
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-testid=events-table] tbody tr').length > {before}")

    # The connection drops; the watch resumes after the last change it saw.
    page.click("button:has-text('Reconnect')")
    page.wait_for_selector("[data-testid=watch-status][data-state=resumed]")
    agent_event = page.locator("[data-testid=events-table] tbody tr", has_text="CVE-2026-0001")
    assert agent_event.count() == 1

    # Invitations: bob and carol approve, dave only views.
    alice.tab("Members")
    invites = {}
    for who, role in (("bob", "ROLE_APPROVER"), ("carol", "ROLE_APPROVER"), ("dave", "ROLE_VIEWER")):
        page.fill("#invite-email", f"{who}@example.test")
        page.select_option("#invite-role", role)
        page.click("button:has-text('Invite')")
        invites[who] = (alice.shown_once("invitation-id"), alice.shown_once("token"))
        page.click("[data-testid=shown-once] >> text=Done")
    people = {}
    for who in ("bob", "carol", "dave"):
        people[who] = Person(stack, browser, who, color_scheme="dark" if who == "carol" else "light").sign_in()
        accept_invite(people[who], invites[who])
    alice.tab("Clusters")
    alice.tab("Members")
    page.wait_for_selector("[data-testid=members-table] >> text=dave@example.test")
    alice.check("05-members")

    # Propose from the event; two other people approve in their own browsers.
    alice.tab("Live events")
    page.locator("[data-testid=events-table] tbody tr", has_text="CVE-2026-0001").locator("a").click()
    page.click("button:has-text('Propose a remediation')")
    page.select_option("#p-risk", "RISK_LEVEL_CRITICAL")
    page.fill("#p-patch", json.dumps({"spec": {"template": {"spec": {"securityContext": {"runAsNonRoot": True}}}}}))
    page.click("button:has-text('Propose')")
    page.wait_for_url("**/remediations/*")
    remediation_url = page.url
    assert page.inner_text("[data-testid=detail-status]") in ("PROPOSED", "PENDING_APPROVAL")
    assert "0 of 2" in page.inner_text("[data-testid=approval-progress]")
    alice.check("06-remediation-proposed")

    for who in ("bob", "carol"):
        p = people[who]
        p.page.goto(remediation_url)
        p.page.fill("#decision-comment", f"{who}: looks right")
        p.page.click("button:has-text('Approve')")
        p.page.wait_for_function("() => !document.querySelector('#decision-comment')"
                                 " || !document.querySelector('#decision-comment').value")
        p.check(f"07-remediation-approved-by-{who}")

    # Alice's open page follows it live: approved, dispatched, executed, verified.
    page.wait_for_selector("[data-testid=detail-status]:has-text('SUCCEEDED')", timeout=60_000)
    page.wait_for_selector("[data-testid=timeline] >> text=Verification")
    timeline = page.inner_text("[data-testid=timeline]")
    assert "ready passed" in timeline and timeline.count("Approved") == 2, timeline
    alice.check("08-remediation-succeeded")

    # The viewer: no approve button, and a request forged from the viewer's own session (with
    # its CSRF token) is refused by the server.
    dave = people["dave"]
    dave.page.goto(remediation_url)
    dave.page.wait_for_selector("[data-testid=remediation-detail]")
    assert dave.page.locator("button:has-text('Approve')").count() == 0
    assert dave.page.locator("nav.tabs >> text=Audit").count() == 0
    forged = dave.page.evaluate("""async (path) => {
        const s = await (await fetch('/console/session')).json();
        const r = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json',
            'X-CSRF-Token': s.csrfToken, 'X-Request-Id': crypto.randomUUID()}, body: '{"version": "1"}'});
        return [r.status, await r.text()];
    }""", f"/v1/tenants/{tenant}/remediations/{remediation_url.rsplit('/', 1)[1]}:approve")
    assert forged[0] == 403, forged
    dave.check("09-viewer-remediation")

    # The audit chain verifies.
    alice.tab("Audit")
    page.click("button:has-text('Verify chain')")
    verdict = page.inner_text("[data-testid=verify-result]")
    assert "Chain intact" in verdict, verdict
    alice.check("10-audit-verified")
    alice.tab("Clusters")
    page.wait_for_selector("[data-testid=connection][data-state=CONNECTION_STATE_CONNECTED]")
    alice.check("11-clusters-connected")

    # Sign-out ends the server session: the old cookie no longer works anywhere.
    cookie = next(c for c in alice.context.cookies() if c["name"] == "zen_session")
    page.click("button:has-text('Sign out')")
    page.wait_for_selector("#username")
    r = http_session().get(f"{stack.base}/v1/tenants", cookies={"zen_session": cookie["value"]}, timeout=15)
    assert r.status_code == 401, r.text
    for p in people.values():
        p.close()
    print(f"\n[{stack.name}] console walk-through: {time.monotonic() - started:.1f} s")


# -- the session's security properties -------------------------------------------------------------


def test_session_cookie_csrf_and_csp(stack, browser):
    http = http_session()
    # The pages carry the strict policy; no inline script is allowed.
    for path in ("/", "/console/t/x/events", "/console/assets/app.js"):
        r = http.get(stack.base + path, timeout=15)
        assert r.status_code == 200, path
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, csp
    # Bearer tokens keep working for API clients.
    login = http.post(f"{stack.base}/auth/local/login", json={"username": "alice", "password": PASSWORD}, timeout=15)
    assert login.status_code == 200, login.text
    bearer = {"Authorization": f"Bearer {login.json()['token']['accessToken']}"}
    assert http.get(f"{stack.base}/v1/tenants", headers=bearer, timeout=15).status_code == 200

    alice = Person(stack, browser, "alice").sign_in()
    try:
        (cookie,) = [c for c in alice.context.cookies() if c["name"] == "zen_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/", cookie
        # Plain HTTP here: Secure only when the public URL is https.
        assert not cookie["secure"]
        assert alice.page.evaluate("() => document.cookie") == ""
        jar = {"zen_session": cookie["value"]}
        csrf = http.get(f"{stack.base}/console/session", cookies=jar, timeout=15).json()["csrfToken"]
        create = lambda headers: http.post(f"{stack.base}/v1/tenants", cookies=jar, timeout=15,  # noqa: E731
                                           json={"name": f"t-{uuid.uuid4().hex[:8]}"},
                                           headers={"X-Request-Id": str(uuid.uuid4()), **headers})
        # With the cookie alone, without the CSRF token, or from another origin: refused.
        assert create({}).status_code == 403
        assert create({"X-CSRF-Token": "0" * 64}).status_code == 403
        assert create({"X-CSRF-Token": csrf, "Origin": "http://evil.example"}).status_code == 403
        assert create({"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert create({"X-CSRF-Token": csrf, "Origin": stack.base}).status_code == 200

        # A cross-site page posting a form to Zen while alice is signed in: refused, nothing made.
        name = f"forged-{uuid.uuid4().hex[:8]}"
        attack = (f'<!doctype html><form id=f method=post action="{stack.base}/v1/tenants" enctype="text/plain">'
                  f'<input name=\'{{"name":"{name}","x":"\' value=\'"}}\'></form>'
                  '<script>document.getElementById("f").submit()</script>').encode()

        class Attacker(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(attack)

            def log_message(self, *args):
                pass

        port = free_port()
        evil = ThreadingHTTPServer(("127.0.0.1", port), Attacker)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            page = alice.context.new_page()
            # localhost is another site than 127.0.0.1.
            with page.expect_navigation(url=f"{stack.base}/v1/tenants"):
                page.goto(f"http://localhost:{port}/")
            status = page.evaluate("() => document.body.innerText")
            page.close()
        finally:
            evil.shutdown()
        assert name not in json.dumps(http.get(f"{stack.base}/v1/tenants", headers=bearer, timeout=15).json())
        assert '"status":4' in status.replace(" ", ""), status

        # The login endpoint itself refuses other origins and forms.
        assert http.post(f"{stack.base}/console/session/login", json={"username": "alice", "password": PASSWORD},
                         headers={"Origin": "http://evil.example"}, timeout=15).status_code == 403
        assert http.post(f"{stack.base}/console/session/login", data={"username": "alice", "password": PASSWORD},
                         timeout=15).status_code == 415
        assert alice.csp == [] and alice.errors == []
    finally:
        alice.close()


def test_keyboard_only(stack, browser):
    """Sign in, skip to the content and open a tenant with the keyboard alone."""
    context = browser.new_context(base_url=stack.base)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto("/")
        page.wait_for_selector("#username")
        focused = lambda: page.evaluate(  # noqa: E731
            "() => [document.activeElement.tagName, document.activeElement.id,"
            " document.activeElement.getAttribute('href') || '']")
        page.keyboard.press("Tab")
        assert focused()[1] == "username"
        page.keyboard.type("alice")
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_selector("button:has-text('Sign out')")
        # Focus continues at the content after sign-in.
        page.wait_for_function("() => document.activeElement.id === 'main'")
        # On a fresh load the first Tab reaches the skip link, which moves focus to the content.
        page.reload()
        page.wait_for_selector("button:has-text('Sign out')")
        page.keyboard.press("Tab")
        assert focused()[2] == "#main", focused()
        page.keyboard.press("Enter")
        assert focused()[1] == "main", focused()
        for _ in range(40):
            page.keyboard.press("Tab")
            if focused()[2].startswith("/console/t/"):
                break
        else:
            raise AssertionError(f"no tenant link reached with Tab; focus on {focused()}")
        page.keyboard.press("Enter")
        page.wait_for_url("**/console/t/*/events")
        page.wait_for_selector("[data-testid=watch-status]")
    finally:
        context.close()


# -- OIDC in the browser ---------------------------------------------------------------------------


def test_oidc_sign_in_ends_in_the_console(tmp_path, browser):
    """Authorization code + PKCE through Zen against a real provider (npm `oidc-provider`,
    tests/oidc/provider.mjs): the callback ends with a redirect into the console and a session
    cookie, never a JSON page, and the return path survives the round trip."""
    if shutil.which("node") is None:
        unavailable("node is required for the test OIDC provider")
    ports = (free_port(), free_port(), free_port())
    base = f"http://127.0.0.1:{ports[1]}"
    provider = subprocess.Popen(
        ["node", "tests/oidc/provider.mjs", "--port", str(free_port()), "--redirect-uri",
         f"{base}/auth/callback/dev", "--exit-with-stdin"],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        issuer = json.loads(provider.stdout.readline())["issuer"]
        providers = [{"name": "dev", "issuer_url": issuer, "client_id": "zen", "client_secret": "zen-test-secret"}]
        server = ZenServer(data_dir=tmp_path / "data", ports=ports, extra_args=["--public-url", base],
                           env={"ZEN_OIDC_PROVIDERS": json.dumps(providers)}).start()
        try:
            context = browser.new_context(base_url=base)
            try:
                context.set_default_timeout(TIMEOUT_MS)
                page = context.new_page()
                csp: list[str] = []
                page.on("console", lambda m: "Content Security Policy" in m.text and csp.append(m.text))
                page.goto("/console/t/none/audit")
                page.click("a:has-text('dev')")
                page.fill("input[name=login]", "erin")
                page.fill("input[name=password]", "anything")
                page.click("button[type=submit]")
                page.click("button:has-text('Continue')")
                page.wait_for_selector("button:has-text('Sign out')")
                assert page.url == f"{base}/console/t/none/audit", page.url
                assert "erin" in page.inner_text("header.top")
                (cookie,) = [c for c in context.cookies() if c["name"] == "zen_session"]
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
                assert csp == []
            finally:
                context.close()
        finally:
            assert server.stop() == 0, server.log()
    finally:
        provider.stdin.close()
        provider.wait(timeout=30)


# -- more of an operator's tasks, each in its own tenant -------------------------------------------


class Api:
    """The REST API with a bearer token: sets up what a test then does in the browser."""

    def __init__(self, stack: Stack, username: str = "alice"):
        self.base, self.http = stack.base, http_session()
        r = self.http.post(f"{self.base}/auth/local/login", json={"username": username, "password": PASSWORD},
                           timeout=15)
        assert r.status_code == 200, r.text
        self.headers = {"Authorization": f"Bearer {r.json()['token']['accessToken']}"}

    def call(self, method: str, path: str, body=None, expect: int = 200) -> dict:
        r = self.http.request(method, self.base + path, json=body, timeout=15,
                              headers={**self.headers, "X-Request-Id": str(uuid.uuid4())})
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else {}

    def tenant(self, prefix: str) -> str:
        created = self.call("POST", "/v1/tenants", {"name": f"{prefix}-{uuid.uuid4().hex[:8]}"})
        return created["tenant"]["tenantId"]


def zen_hmac_delivery(base: str, url_path: str, secret: str, body: bytes):
    timestamp, nonce = str(int(time.time())), uuid.uuid4().hex
    mac = hmac.new(secret.encode(), f"{timestamp}.{nonce}.".encode() + body, hashlib.sha256).hexdigest()
    return http_session().post(base + url_path, data=body, timeout=15, headers={
        "Content-Type": "application/json", "X-Timestamp": timestamp, "X-Nonce": nonce, "X-Signature": mac})


def test_sources_recent_deliveries_rotation_and_disabling(stack, browser):
    api = Api(stack)
    tenant = api.tenant("sources")
    alice = Person(stack, browser, "alice").sign_in(f"/console/t/{tenant}/sources")
    page = alice.page
    try:
        page.select_option("#preset", "github")
        page.fill("#source-name", "github")
        page.click("button:has-text('Create source')")
        url, secret = alice.shown_once("url"), alice.shown_once("secret")
        page.click("[data-testid=shown-once] >> text=Done")
        path = "/webhooks/" + url.rsplit("/webhooks/", 1)[1]
        fixture = json.loads((FIXTURES / "github-dependabot-alert.json").read_text())

        def github(signing_secret: str, delivery: str):
            # A body of its own per delivery (the same body again would be a duplicate).
            body = json.dumps({**fixture, "zen_test_delivery": delivery}, separators=(",", ":")).encode()
            return http_session().post(stack.base + path, data=body, timeout=15, headers={
                "Content-Type": "application/json", "X-GitHub-Event": "dependabot_alert",
                "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": octokit_sign(signing_secret, body)})

        assert github(secret, "gh-accepted").status_code == 202
        assert github("not the secret at all", "gh-forged").status_code == 401
        row = page.locator("[data-testid=sources-table] tbody tr[data-source=github]")
        row.locator("button:has-text('Deliveries')").click()
        deliveries = page.locator("[data-testid=deliveries] tbody tr")
        deliveries.nth(1).wait_for()
        assert deliveries.nth(0).get_attribute("data-outcome") == "refused"
        refused = deliveries.nth(0).inner_text()
        assert "401" in refused and "bad_signature" in refused and "gh-forged" in refused, refused
        accepted = deliveries.nth(1).inner_text()
        assert deliveries.nth(1).get_attribute("data-outcome") == "accepted" and "202" in accepted, accepted
        alice.check("12-source-deliveries")

        # Rotation: the new secret is shown once; both secrets verify until the old one expires.
        row.locator("button:has-text('Rotate secret')").click()
        new_secret = alice.shown_once("secret")
        assert new_secret and new_secret != secret
        page.click("[data-testid=shown-once] >> text=Done")
        assert github(new_secret, "gh-new-secret").status_code == 202
        assert github(secret, "gh-old-secret").status_code == 202

        # Disabled: deliveries are refused (and logged as such) until it is enabled again.
        row.locator("button:has-text('Disable')").click()
        page.wait_for_selector("[data-testid=sources-table] tr[data-source=github] [data-testid=enabled]:has-text('no')")
        assert github(new_secret, "gh-while-disabled").status_code == 400
        page.click("[data-testid=deliveries] >> text=Refresh")
        page.wait_for_function("() => document.querySelector('[data-testid=deliveries] tbody tr')"
                               ".innerText.includes('gh-while-disabled')")
        assert "disabled" in deliveries.nth(0).inner_text()
        row.locator("button:has-text('Enable')").click()
        page.wait_for_selector("[data-testid=sources-table] tr[data-source=github] [data-testid=enabled]:has-text('yes')")
        assert github(new_secret, "gh-enabled-again").status_code == 202
        alice.check("13-source-rotated-disabled-enabled")
    finally:
        alice.close()


def test_reject_cancel_and_dead_letter_replay(stack, browser):
    api = Api(stack)
    tenant = api.tenant("decisions")
    cluster = api.call("POST", f"/v1/tenants/{tenant}/clusters", {"name": "hung-agent"})["cluster"]["clusterId"]
    # One attempt, then a dead letter.
    api.call("PATCH", f"/v1/tenants/{tenant}/approvalPolicy?updateMask=maxDispatchAttempts",
             {"maxDispatchAttempts": 1})

    def propose(title: str, risk: str) -> str:
        r = api.call("POST", f"/v1/tenants/{tenant}/remediations", {
            "clusterId": cluster, "title": title, "risk": risk,
            "action": {"serverSideApply": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop",
                                           "name": "api", "patch": {"spec": {"replicas": 2}}}}})
        return r["remediation"]["remediationId"]

    rejected, cancelled = propose("Reject me", "RISK_LEVEL_HIGH"), propose("Cancel me", "RISK_LEVEL_HIGH")
    alice = Person(stack, browser, "alice").sign_in()
    page = alice.page
    agent = None
    try:
        for remediation, button, status in ((rejected, "Reject", "REJECTED"),
                                            (cancelled, "Cancel remediation", "CANCELLED")):
            page.goto(f"/console/t/{tenant}/remediations/{remediation}")
            page.wait_for_selector("[data-testid=detail-status]")
            assert page.inner_text("[data-testid=detail-status]") in ("PROPOSED", "PENDING_APPROVAL")
            # A decision needs a comment.
            page.click(f"button:has-text('{button}')")
            page.wait_for_selector("[role=alert]:has-text('a comment is required')")
            page.fill("#decision-comment", f"{button.lower()}: not this week")
            page.click(f"button:has-text('{button}')")
            page.wait_for_selector(f"[data-testid=detail-status]:has-text('{status}')")
            stored = api.call("GET", f"/v1/tenants/{tenant}/remediations/{remediation}")["remediation"]
            assert stored["status"] == f"REMEDIATION_STATUS_{status}", stored
            # Nothing more may be decided on it.
            assert page.locator("#decision-comment").count() == 0
        alice.check("14-remediation-cancelled")

        # An agent that connects and then hangs (SIGSTOP): a LOW-risk remediation (approved at
        # once) is sent to it, never acknowledged, and dead-lettered after its one attempt.
        token = api.call("POST", f"/v1/tenants/{tenant}/clusters/{cluster}/bootstrapTokens", {})["token"]
        agent_dir = stack.workdir / f"hung-agent-{stack.name}"
        stack.zen("agent", "bootstrap", "--url", stack.base, "--grpc-url",
                  f"https://127.0.0.1:{stack.server.grpc_port}", "--token", token, "--dir", str(agent_dir))
        quiet = stack.workdir / "no-events.jsonl"
        quiet.write_text("")
        agent = subprocess.Popen([str(zen_binary()), "agent", "run", "--dir", str(agent_dir), "--input", str(quiet),
                                  "--follow"], env=clean_env(), cwd=stack.workdir, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while api.call("GET", f"/v1/tenants/{tenant}/clusters/{cluster}")["cluster"].get("connectionState") \
                != "CONNECTION_STATE_CONNECTED":
            assert time.monotonic() < deadline, "the agent did not connect"
            time.sleep(0.2)
        agent.send_signal(signal.SIGSTOP)
        stranded = propose("Nobody acknowledges", "RISK_LEVEL_LOW")
        deadline = time.monotonic() + 30
        while not api.call("GET", f"/v1/tenants/{tenant}/deadLetters").get("deadLetters"):
            assert time.monotonic() < deadline, \
                f"no dead letter within 30 s: {api.call('GET', f'/v1/tenants/{tenant}/remediations/{stranded}')}"
            time.sleep(0.5)
        page.goto(f"/console/t/{tenant}/remediations")
        letter = page.locator("table[aria-label='Dead letters'] tbody tr", has_text=stranded)
        letter.locator("button:has-text('Replay')").click()
        # Replayed: the letter stays listed with its replay time and no button.
        page.wait_for_function(
            "(id) => [...document.querySelectorAll(\"table[aria-label='Dead letters'] tbody tr\")]"
            ".some((tr) => tr.innerText.includes(id) && !tr.querySelector('button'))", arg=stranded)
        replayed = [d for d in api.call("GET", f"/v1/tenants/{tenant}/deadLetters?showReplayed=true")["deadLetters"]
                    if d.get("replayTime")]
        assert [d["remediationId"] for d in replayed] == [stranded], replayed
        alice.check("15-dead-letter-replayed")
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGCONT)
            agent.terminate()
            agent.wait(timeout=30)
        alice.close()


def test_members_roles_and_what_a_viewer_is_offered(stack, browser):
    api = Api(stack)
    tenant = api.tenant("members")
    invite = api.call("POST", f"/v1/tenants/{tenant}/invites", {"email": "dave@example.test", "role": "ROLE_VIEWER"})
    dave_api = Api(stack, "dave")
    dave_api.call("POST", f"/v1/invites/{invite['invite']['inviteId']}:accept", {"token": invite["token"]})
    source = api.call("POST", f"/v1/tenants/{tenant}/webhookSources",
                      {"name": "alerts", "enabled": True, "verification": {"scheme": "WEBHOOK_SCHEME_ZEN_HMAC"}})
    dave = Person(stack, browser, "dave").sign_in(f"/console/t/{tenant}/sources")
    alice = Person(stack, browser, "alice").sign_in(f"/console/t/{tenant}/members")
    try:
        # The viewer: sources and their deliveries, but no control that changes anything.
        dpage = dave.page
        dpage.wait_for_selector("[data-testid=sources-table] tr[data-source=alerts]")
        for control in ("Rotate secret", "Disable", "Create source"):
            assert dpage.locator(f"button:has-text('{control}')").count() == 0, control
        dpage.click("button:has-text('Deliveries')")
        dpage.wait_for_selector("[data-testid=deliveries] >> text=No delivery in the last 7 days")
        assert dpage.locator("nav.tabs >> text=Members").count() == 0
        # A deep link to a page the role may not open says so; so does a tenant dave is not in.
        dpage.goto(f"/console/t/{tenant}/members")
        assert "needs the admin role" in dpage.inner_text("[data-testid=not-available]")
        dave.check("16-viewer-deep-link")
        dpage.goto(f"/console/t/{uuid.uuid4()}/events")
        assert "not a member" in dpage.inner_text("[data-testid=not-available]")
        # And the server refuses what the page does not offer, from the viewer's own session.
        forged = dpage.evaluate("""async (path) => {
            const s = await (await fetch('/console/session')).json();
            const r = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json',
                'X-CSRF-Token': s.csrfToken, 'X-Request-Id': crypto.randomUUID()}, body: '{}'});
            return r.status;
        }""", f"/v1/tenants/{tenant}/webhookSources/{source['webhookSource']['sourceId']}:rotateSecret")
        assert forged == 403

        # The admin promotes dave to approver, then removes him.
        page = alice.page
        (dave_id,) = [m["userId"] for m in api.call("GET", f"/v1/tenants/{tenant}/members")["members"]
                      if m["email"] == "dave@example.test"]
        page.select_option(f"#role-{dave_id}", "ROLE_APPROVER")
        deadline = time.monotonic() + 15
        while not any(m["userId"] == dave_id and m["role"] == "ROLE_APPROVER"
                      for m in api.call("GET", f"/v1/tenants/{tenant}/members")["members"]):
            assert time.monotonic() < deadline, "the role did not change"
            time.sleep(0.2)
        alice.check("17-member-promoted")
        page.click("button[aria-label='Remove dave@example.test']")
        page.wait_for_function("() => !document.querySelector('[data-testid=members-table]')"
                               ".innerText.includes('dave@example.test')")
        members = api.call("GET", f"/v1/tenants/{tenant}/members")["members"]
        assert all(m["email"] != "dave@example.test" for m in members), members
        # Removed: dave's session reaches nothing of the tenant any more.
        status = dpage.evaluate("async (path) => (await fetch(path)).status", f"/v1/tenants/{tenant}/webhookSources")
        assert status in (403, 404), status
    finally:
        dave.close()
        alice.close()


def test_watch_resumes_after_a_lost_connection_with_no_gap_and_no_duplicate(stack, browser):
    """The connection is lost while events keep arriving: the page is told, reconnects on its own
    with its resume token, and then shows every event exactly once. Playwright stands between the
    page and Zen (route_web_socket): it forwards the first connection, then drops what Zen sends
    on it, then closes it, as a network that fails silently would."""
    api = Api(stack)
    tenant = api.tenant("watch")
    created = api.call("POST", f"/v1/tenants/{tenant}/webhookSources", {
        "name": "alerts", "enabled": True, "verification": {"scheme": "WEBHOOK_SCHEME_ZEN_HMAC"},
        "mapping": {"fields": [{"target": "MAPPED_FIELD_TITLE", "pointer": "/title"}]}})
    source_path = "/webhooks/" + created["webhookSource"]["url"].rsplit("/webhooks/", 1)[1]
    connections: list[dict] = []

    def route(ws):
        server = ws.connect_to_server()
        connection = {"page": ws, "server": server, "lost": False, "titles": []}

        def from_server(message):
            if connection["lost"]:
                return
            change = json.loads(message)
            if "event" in change:
                connection["titles"].append(change["event"].get("title"))
            ws.send(message)

        server.on_message(from_server)
        connections.append(connection)

    def deliver(title: str) -> None:
        body = json.dumps({"title": title, "severity": "high"}).encode()
        r = zen_hmac_delivery(stack.base, source_path, created["secret"], body)
        assert r.status_code == 202, r.text

    alice = Person(stack, browser, "alice")
    alice.page.route_web_socket("**/events:watch*", route)
    page = alice.page
    rows = page.locator("[data-testid=events-table] tbody tr")
    try:
        alice.sign_in(f"/console/t/{tenant}/events")
        page.wait_for_selector("[data-testid=watch-status][data-state=live]")
        for i in range(3):
            deliver(f"before-{i}")
        page.wait_for_function("() => document.querySelectorAll('[data-testid=events-table] tbody tr').length === 3")
        # The network fails silently: what Zen sends is lost, then the connection closes.
        connections[0]["lost"] = True
        for i in range(3):
            deliver(f"during-{i}")
        time.sleep(1)
        assert rows.count() == 3
        connections[0]["page"].close(code=4000, reason="network lost")
        connections[0]["server"].close()
        page.wait_for_selector("[data-testid=watch-status][data-state=resumed]")
        for i in range(2):
            deliver(f"after-{i}")
        page.wait_for_function("() => document.querySelectorAll('[data-testid=events-table] tbody tr').length === 8")
        titles = sorted(t.split("\n")[0] for t in rows.locator("td:nth-child(2)").all_inner_texts())
        expected = sorted([f"before-{i}" for i in range(3)] + [f"during-{i}" for i in range(3)] +
                          [f"after-{i}" for i in range(2)])
        assert titles == expected, titles
        # Zen resumed after the last change the page had: the second connection carried what was
        # lost and what came after, and nothing the page already had.
        assert len(connections) == 2, connections
        resumed = sorted([f"during-{i}" for i in range(3)] + [f"after-{i}" for i in range(2)])
        assert sorted(connections[1]["titles"]) == resumed, connections[1]["titles"]
        alice.check("18-watch-resumed")
    finally:
        alice.close()


def test_session_outlives_its_access_token(tmp_path, browser):
    """The console's session refreshes the access token it relays: a page used after the token's
    lifetime (60 s, the least allowed) keeps working without a new sign-in."""
    server = ZenServer(data_dir=tmp_path / "data", extra_args=["--local-login", "true"],
                       env={"ZEN_ACCESS_TOKEN_TTL_SECONDS": "60"})
    for args in (["migrate"], ["user", "add", "--username", "erin", "--email", "erin@example.test",
                                "--password-stdin", "--admin"]):
        proc = subprocess.run([str(zen_binary()), "--data-dir", str(server.data_dir), *args], input=PASSWORD + "\n",
                              env=clean_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    server.start()
    try:
        context = browser.new_context(base_url=server.http_base)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        try:
            page.goto("/")
            page.fill("#username", "erin")
            page.fill("#password", PASSWORD)
            page.click("button:has-text('Sign in')")
            page.wait_for_selector("button:has-text('Sign out')")
            cookie = next(c["value"] for c in context.cookies() if c["name"] == "zen_session")
            time.sleep(62)
            # A state change after the token expired: the session refreshes it and relays the new one.
            page.fill("#tenant-name", "after-expiry")
            page.click("button:has-text('Create tenant')")
            page.wait_for_url("**/console/t/*/events")
            page.wait_for_selector("[data-testid=watch-status][data-state=live]")
            assert page.locator("#username").count() == 0
            # The same session, not a new one.
            assert next(c["value"] for c in context.cookies() if c["name"] == "zen_session") == cookie
        finally:
            context.close()
    finally:
        assert server.stop() == 0, server.log()


# -- Firefox ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def firefox():
    """Debian's Firefox ESR over Marionette, its own remote protocol (PyPI `marionette-driver`,
    Mozilla's client): Playwright drives only its own patched Firefox build."""
    path = os.environ.get("ZEN_FIREFOX") or shutil.which("firefox-esr") or shutil.which("firefox")
    if not path:
        unavailable("firefox is not installed (scripts/lib.sh ensure_firefox installs it)")
    from marionette_driver.marionette import Marionette

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    marionette = Marionette(bin=path, headless=True, port=free_port(), startup_timeout=120,
                            gecko_log=str(ARTIFACTS / "gecko.log"))
    marionette.start_session()
    try:
        yield marionette
    finally:
        marionette.delete_session()
        marionette.cleanup()


def test_firefox_signs_in_and_opens_every_page_live(stack, firefox):
    """The console in Firefox: sign in, open every page of a tenant, see a delivered event arrive
    over the watch WebSocket; no script error and no CSP violation reported on the way."""
    from marionette_driver import By, Wait

    api = Api(stack)
    tenant = api.tenant("firefox")
    created = api.call("POST", f"/v1/tenants/{tenant}/webhookSources", {
        "name": "alerts", "enabled": True, "verification": {"scheme": "WEBHOOK_SCHEME_ZEN_HMAC"},
        "mapping": {"fields": [{"target": "MAPPED_FIELD_TITLE", "pointer": "/title"}]}})
    source_path = "/webhooks/" + created["webhookSource"]["url"].rsplit("/webhooks/", 1)[1]
    m = firefox
    wait = Wait(m, timeout=TIMEOUT_MS / 1000)

    def text_of(selector: str) -> str:
        found = m.find_elements(By.CSS_SELECTOR, selector)
        return found[0].text if found else ""

    m.navigate(f"{stack.base}/console/t/{tenant}/events")
    wait.until(lambda _: m.find_elements(By.ID, "username"))
    m.find_element(By.ID, "username").send_keys("alice")
    m.find_element(By.ID, "password").send_keys(PASSWORD)
    m.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda _: "Sign out" in text_of("header.top"))
    # From here on the page reports what goes wrong (it stays loaded: navigation is in-page).
    m.execute_script("""
        window.__zen = {errors: [], csp: []};
        addEventListener('error', (e) => __zen.errors.push(String(e.message)));
        addEventListener('unhandledrejection', (e) => __zen.errors.push(String(e.reason)));
        document.addEventListener('securitypolicyviolation',
            (e) => __zen.csp.push(e.violatedDirective + ' ' + e.blockedURI));
    """, sandbox=None, new_sandbox=False)  # in the page's own scope, where later calls read it
    wait.until(lambda _: m.find_elements(By.CSS_SELECTOR, "[data-testid=watch-status][data-state=live]"))
    body = json.dumps({"title": "seen in firefox", "severity": "high"}).encode()
    r = zen_hmac_delivery(stack.base, source_path, created["secret"], body)
    assert r.status_code == 202, r.text
    wait.until(lambda _: "seen in firefox" in text_of("[data-testid=events-table]"))
    (stack.shots / "firefox-events.png").write_bytes(m.screenshot(format="binary"))

    headings = {"clusters": "Clusters", "sources": "Webhook sources", "remediations": "Remediations",
                "audit": "Audit", "members": "Members", "events": "Live events"}
    for page, heading in headings.items():
        m.find_element(By.CSS_SELECTOR, f"nav.tabs a[href$='/{page}']").click()
        wait.until(lambda _: text_of("main h2").startswith(heading))
        (stack.shots / f"firefox-{page}.png").write_bytes(m.screenshot(format="binary"))
    m.find_element(By.CSS_SELECTOR, "nav.tabs a[href$='/sources']").click()
    wait.until(lambda _: m.find_elements(By.CSS_SELECTOR, "[data-testid=sources-table] tr[data-source=alerts]"))
    m.find_element(By.CSS_SELECTOR, "button[aria-label='Recent deliveries to alerts']").click()
    wait.until(lambda _: "accepted" in text_of("[data-testid=deliveries]"))
    reported = m.execute_script("return window.__zen", sandbox=None, new_sandbox=False)
    assert reported == {"errors": [], "csp": []}, reported
