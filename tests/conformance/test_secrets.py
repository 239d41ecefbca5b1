"""Secrets are never printed: `--help`, configuration errors and logs mask every credential.

Each case sets distinctive secrets in every secret-bearing setting (URL passwords, query
parameters, webhook sealing keys, the legacy agent key, OIDC client secrets, bootstrap and
invite tokens) and scans everything the real binary writes for them.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from support import clean_env, free_port, zen_binary

SECRETS = {
    "db": "PgPassw0rd-x7Q",
    "dbq": "PgQueryPw-k2Z",
    "redis": "RedisPassw0rd-m3W",
    "webhook": "a2V5LWJ5dGVzLXRoYXQtYXJlLTMyLWxvbmchISE=",
    "legacy": "legacy-agent-key-that-is-long-enough-9Jk",
    "oidc": "oidc-client-secret-5Hh",
    "bootstrap": "zbt-bootstrap-token-3Rr",
}


def secret_env(**overrides: str) -> dict[str, str]:
    env = {
        "ZEN_DATABASE_URL": f"postgres://zen:{SECRETS['db']}@127.0.0.1:{free_port()}/zen?password={SECRETS['dbq']}",
        "ZEN_REDIS_URL": f"redis://:{SECRETS['redis']}@127.0.0.1:{free_port()}/0",
        "ZEN_WEBHOOK_SECRET_KEYS": f"k1:{SECRETS['webhook']}",
        "ZEN_LEGACY_AGENT_KEY": SECRETS["legacy"],
        "ZEN_OIDC_PROVIDERS": json.dumps([{
            "name": "corp", "issuer_url": "https://idp.example.test", "client_id": "zen",
            "client_secret": SECRETS["oidc"], "scopes": ["openid"],
        }]),
        "ZEN_BOOTSTRAP_TOKEN": SECRETS["bootstrap"],
    }
    env.update(overrides)
    return clean_env(**env)


def assert_no_secret(text: str, what: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{what} printed the {name} secret:\n{text}"


@pytest.mark.parametrize("args", [
    ["--help"],
    ["serve", "--help"],
    ["agent", "bootstrap", "--help"],
    ["keys", "legacy-agent-key", "--help"],
    ["migrate", "--help"],
])
def test_help_shows_no_secret_from_the_environment(args):
    proc = subprocess.run([str(zen_binary()), *args], env=secret_env(), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "ZEN_DATABASE_URL" in proc.stdout or args[0] != "serve", "the variable is still named"
    assert_no_secret(proc.stdout + proc.stderr, f"zen {' '.join(args)}")


@pytest.mark.parametrize("override", [
    {"ZEN_DATABASE_URL": f"mysql://root:{SECRETS['db']}@db/zen"},
    {"ZEN_DATABASE_URL": f"postgres:{SECRETS['db']}@db/zen"},
    {"ZEN_REDIS_URL": f"http://:{SECRETS['redis']}@cache:6379"},
    {"ZEN_PUBLIC_URL": f"ftp://user:{SECRETS['db']}@zen.example"},
])
def test_configuration_errors_mask_credentials(tmp_path, override):
    proc = subprocess.run(
        [str(zen_binary()), "--data-dir", str(tmp_path), "serve"], env=secret_env(**override),
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode != 0
    assert "error" in proc.stderr.lower(), proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, f"zen serve with {list(override)}")


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["dlq", "list", "--tenant",
                                                                   "00000000-0000-0000-0000-000000000000"]])
def test_unreachable_dependencies_are_reported_without_credentials(tmp_path, command):
    """Nothing listens on the database's port: the failure (and every log line before it)
    names the database without its password."""
    proc = subprocess.run(
        [str(zen_binary()), "--data-dir", str(tmp_path), "--log-format", "json", *command],
        env=secret_env(RUST_LOG="debug"), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert "127.0.0.1" in output or "connect" in output.lower(), output
    assert_no_secret(output, f"zen {command[0]}")


def test_a_serving_zen_logs_no_secret(tmp_path):
    """SQLite, a Redis URL with a password that Redis refuses: the logs of a start that fails on
    the cache, with debug logging, hold none of the secrets."""
    proc = subprocess.run(
        [str(zen_binary()), "--data-dir", str(tmp_path), "serve", "--grpc-addr",
         f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{free_port()}"],
        env=secret_env(ZEN_DATABASE_URL=f"sqlite://{tmp_path}/zen.db", RUST_LOG="debug",
                       ZEN_REDIS_URL=f"redis://:{SECRETS['redis']}@127.0.0.1:{free_port()}/0"),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert_no_secret(proc.stdout + proc.stderr, "zen serve")
