"""The operator CLI as a script sees it: exit codes, output formats, completions, the session
file, against a real `zen serve` with local login."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from support import ZenServer, clean_env, zen_binary

PASSWORD = "a long password here"


def zen(*args: str, session=None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = clean_env(**({"ZEN_CLI_CONFIG": str(session)} if session else {}))
    return subprocess.run([str(zen_binary()), *args], input=stdin, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ZenServer(data_dir=tmp_path_factory.mktemp("zen-cli") / "data",
                    extra_args=["--local-login", "true"]).start()
    try:
        for name, admin in (("root", True), ("vic", False)):
            proc = zen("--data-dir", str(srv.data_dir), "user", "add", "--username", name, "--email",
                       f"{name}@example.test", *(["--admin"] if admin else []), "--password-stdin",
                       stdin=PASSWORD + "\n")
            assert proc.returncode == 0, proc.stderr
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def root(server, tmp_path_factory):
    session = tmp_path_factory.mktemp("sessions") / "root.json"
    proc = zen("login", "--url", server.http_base, "--username", "root", "--password-stdin",
               session=session, stdin=PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    assert oct(session.stat().st_mode & 0o777) == "0o600"
    assert PASSWORD not in session.read_text()
    return session


def test_exit_codes_tell_scripts_what_went_wrong(server, root, tmp_path):
    nobody = tmp_path / "none.json"
    assert zen("tenant", "list", session=nobody).returncode == 3, "not logged in"
    bad = zen("login", "--url", server.http_base, "--username", "root", "--password-stdin",
              session=tmp_path / "bad.json", stdin="wrong password entirely\n")
    assert bad.returncode == 3, bad.stderr
    assert zen("tenant", "get", "01890a5d-ac96-774b-bcce-b302099a8057", session=root).returncode in (4, 5)
    assert zen("tenant", "create", "Not A Label!", session=root).returncode == 6
    tenant = zen("tenant", "create", "cli-one", "-o", "id", session=root)
    assert tenant.returncode == 0, tenant.stderr
    assert zen("tenant", "create", "cli-one", session=root).returncode == 7, "the name is taken"
    unreachable = tmp_path / "unreachable.json"
    unreachable.write_text(json.dumps({"url": "http://127.0.0.1:9", "username": "x",
                                       "access_token": "t", "refresh_token": "r"}))
    assert zen("tenant", "list", session=unreachable).returncode == 8
    assert zen("tenant", "frobnicate", session=root).returncode == 2

    vic = tmp_path / "vic.json"
    assert zen("login", "--url", server.http_base, "--username", "vic", "--password-stdin",
               session=vic, stdin=PASSWORD + "\n").returncode == 0
    denied = zen("cluster", "create", "--tenant", tenant.stdout.strip(), "c1", session=vic)
    assert denied.returncode in (4, 5), denied.stderr
    watch = zen("event", "watch", "--tenant", tenant.stdout.strip(), "--count", "1",
                "--timeout-seconds", "1", session=root)
    assert watch.returncode == 9, watch.stderr


def test_outputs_are_machine_readable(root):
    created = zen("tenant", "create", "cli-two", "-o", "json", session=root)
    assert created.returncode == 0, created.stderr
    tenant = json.loads(created.stdout)["tenant"]
    as_yaml = yaml.safe_load(zen("tenant", "get", tenant["tenantId"], "-o", "yaml", session=root).stdout)
    assert as_yaml["tenant"]["tenantId"] == tenant["tenantId"]
    assert as_yaml["tenant"]["name"] == "cli-two"
    table = zen("tenant", "list", session=root).stdout.splitlines()
    assert table[0].split() == ["TENANTID", "NAME", "STATUS"]
    assert any(tenant["tenantId"] in line and "cli-two" in line for line in table[1:])
    ids = zen("tenant", "list", "-o", "id", session=root).stdout.split()
    assert tenant["tenantId"] in ids


@pytest.mark.parametrize("shell,marker", [("bash", "_zen()"), ("zsh", "#compdef zen"), ("fish", "complete -c zen")])
def test_completions(shell, marker):
    proc = zen("completions", shell)
    assert proc.returncode == 0 and marker in proc.stdout
    assert "remediation" in proc.stdout and "tenant" in proc.stdout
