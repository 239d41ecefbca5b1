"""Helpers for the conformance suite: run the real `zen` binary and talk to it as a third party.

Nothing here imports Zen's code: the suite sees Zen only through its sockets, its CLI and the
stubs that `buf generate` produced from the contracts.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
GEN_PYTHON = REPO_ROOT / "gen" / "python"

#: Every call made by the suite carries this deadline (seconds).
RPC_TIMEOUT = 10.0
#: How long the server gets to become healthy.
START_TIMEOUT = 60.0
#: Grace period the server is started with; SIGTERM must end it well within this plus a margin.
SHUTDOWN_GRACE_SECONDS = 5
STOP_TIMEOUT = SHUTDOWN_GRACE_SECONDS + 25.0

#: The services of the Zen contract that every build must serve (even if only UNIMPLEMENTED).
ZEN_SERVICES = (
    "zen.auth.v1.AuthService",
    "zen.tenancy.v1.TenancyService",
    "zen.ingest.v1.IngestService",
    "zen.remediation.v1.RemediationService",
    "zen.audit.v1.AuditService",
)
HEALTH_SERVICE = "grpc.health.v1.Health"


def zen_binary() -> Path:
    """The binary under test: $ZEN_BIN, else `${CARGO_TARGET_DIR:-target}/debug/zen`."""
    explicit = os.environ.get("ZEN_BIN")
    if explicit:
        return Path(explicit).resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    return target / "debug" / "zen"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child `zen`: no ZEN_* or OTEL_* leaking in from the caller, no proxies."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ZEN_", "OTEL_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy")
    }
    env.setdefault("RUST_BACKTRACE", "1")
    env.update(extra)
    return env


def run_zen(*args: str, data_dir: Path | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Runs a one-shot `zen` subcommand (pki, migrate) and fails loudly when it fails."""
    cmd = [str(zen_binary())]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    cmd += list(args)
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_accepts(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never a proxy
    return session


#: Rate limits out of the way of tests about something else (the tests share one client address
#: and send bursts); tests/limits.rs checks the limits themselves. A test's own `env` wins.
UNMETERED = {
    "ZEN_RATE_LIMIT_ANONYMOUS_RPS": "1000000",
    "ZEN_RATE_LIMIT_UNVERIFIED_WEBHOOKS_RPS": "1000000",
    "ZEN_RATE_LIMIT_USER_RPS": "1000000",
    "ZEN_RATE_LIMIT_CLUSTER_RPS": "1000000",
    "ZEN_DEFAULT_TENANT_REQUESTS_PER_SECOND": "0",
}


@dataclass
class ZenServer:
    """A running `zen serve` on a fresh data dir and free ports."""

    data_dir: Path
    grpc_port: int = 0
    http_port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    #: (gRPC, HTTP, admin) ports to bind instead of free ones picked at start, for tests that
    #: must name Zen's URL before it runs (an OIDC provider's registered redirect URI).
    ports: tuple[int, int, int] | None = None

    # -- addresses and identities ---------------------------------------------------------
    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_base(self) -> str:
        """The admin listener: metrics and deep health."""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pki(self) -> Path:
        return self.data_dir / "pki"

    def log(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return "<no log>"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, attempts: int = 3) -> "ZenServer":
        binary = zen_binary()
        if not binary.exists():
            raise AssertionError(
                f"zen binary not found at {binary}: build it (cargo build --bin zen) or set ZEN_BIN"
            )
        last_log = ""
        for attempt in range(attempts):
            if self.ports:
                self.grpc_port, self.http_port, self.admin_port = self.ports
            else:
                self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
            while len({self.grpc_port, self.http_port, self.admin_port}) < 3:
                self.http_port, self.admin_port = free_port(), free_port()
            self.log_path = self.data_dir.parent / f"{self.data_dir.name}-serve-{attempt}.log"
            cmd = [
                str(binary),
                "serve",
                "--data-dir", str(self.data_dir),
                "--grpc-addr", self.grpc_target,
                "--http-addr", f"127.0.0.1:{self.http_port}",
                "--admin-addr", f"127.0.0.1:{self.admin_port}",
                "--log-format", "text",
                *self.extra_args,
            ]
            env = clean_env(ZEN_SHUTDOWN_GRACE_SECONDS=str(SHUTDOWN_GRACE_SECONDS),
                            **{**UNMETERED, **self.env})
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return self
            self._kill()
            last_log = self.log()
            # Someone took one of our ports between probing and binding: try new ones.
            if "in use" not in last_log.lower() or self.ports:
                break
        code = self.process.returncode if self.process else None
        why = f"exited with code {code}" if code not in (None, -signal.SIGKILL) else (
            f"did not answer /health with 200 within {START_TIMEOUT:.0f}s"
        )
        raise AssertionError(f"zen serve {why}\n--- zen output\n{last_log}")

    def _wait_ready(self) -> bool:
        """Polls /health for 200 and the gRPC port for a listener; False if the process died."""
        deadline = time.monotonic() + START_TIMEOUT
        session = http_session()
        healthy = False
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if not healthy:
                try:
                    healthy = session.get(f"{self.http_base}/health", timeout=2).status_code == 200
                except requests.RequestException:
                    healthy = False
            if healthy and tcp_accepts(self.grpc_port):
                return True
            time.sleep(0.1)
        return False

    def _kill(self) -> None:
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, then wait for the drain; returns the exit code (SIGKILL and raise on hang)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill()
                raise AssertionError(
                    f"zen serve did not exit within {STOP_TIMEOUT:.0f}s of SIGTERM\n--- zen output\n{self.log()}"
                )
        return self.process.returncode

    # -- gRPC ----------------------------------------------------------------------------
    def credentials(self, cert: Path | None = None, key: Path | None = None, ca: Path | None = None):
        """TLS credentials trusting the server's CA, with an optional client identity."""
        root = (ca or self.pki / "ca.crt").read_bytes()
        if cert is None:
            return grpc.ssl_channel_credentials(root_certificates=root)
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key.read_bytes(), certificate_chain=cert.read_bytes()
        )

    def admin_credentials(self):
        return self.credentials(self.pki / "admin.crt", self.pki / "admin.key")

    def channel(self, credentials=None) -> grpc.Channel:
        """A secure channel to the gRPC front, verifying the server as `localhost`."""
        return grpc.secure_channel(
            self.grpc_target,
            credentials if credentials is not None else self.admin_credentials(),
            options=[
                ("grpc.ssl_target_name_override", "localhost"),
                ("grpc.default_authority", "localhost"),
                ("grpc.enable_http_proxy", 0),
                ("grpc.enable_retries", 0),
            ],
        )


# -- generated stubs (buf generate -> gen/python) -------------------------------------------


def import_generated(package: str) -> list:
    """Imports every `*_pb2` module of a generated package such as `zen.tenancy.v1`."""
    if not GEN_PYTHON.is_dir():
        raise AssertionError(f"{GEN_PYTHON} is missing: run `npx buf generate` (scripts/test.sh does)")
    if str(GEN_PYTHON) not in sys.path:
        sys.path.insert(0, str(GEN_PYTHON))
    directory = GEN_PYTHON.joinpath(*package.split("."))
    names = sorted(m.name for m in pkgutil.iter_modules([str(directory)]))
    if not names:
        raise AssertionError(f"no generated modules in {directory}")
    return [importlib.import_module(f"{package}.{name}") for name in names]


def service_stub(channel: grpc.Channel, full_name: str):
    """(stub, service descriptor) for a service, from the buf-generated `_pb2_grpc` module."""
    package, _, service = full_name.rpartition(".")
    modules = import_generated(package)
    descriptor = None
    for module in modules:
        file_descriptor = getattr(module, "DESCRIPTOR", None)
        if file_descriptor is not None and service in file_descriptor.services_by_name:
            descriptor = file_descriptor.services_by_name[service]
    stub_class = next(
        (getattr(m, f"{service}Stub") for m in modules if hasattr(m, f"{service}Stub")), None
    )
    if descriptor is None or stub_class is None:
        raise AssertionError(f"the generated stubs for {package} lack {service} (modules: {modules})")
    return stub_class(channel), descriptor


def message_class(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def response_metadata(call) -> dict[str, str]:
    """Initial and trailing metadata of a finished call (or of the RpcError it raised)."""
    merged: dict[str, str] = {}
    for getter in ("initial_metadata", "trailing_metadata"):
        with contextlib.suppress(Exception):
            for key, value in getattr(call, getter)() or ():
                merged.setdefault(key.lower(), value)
    return merged


def buf_command() -> list[str] | None:
    """The pinned buf (npx, from the repository's node_modules), or None when not installed."""
    if (REPO_ROOT / "node_modules" / ".bin" / "buf").exists() and shutil.which("npx"):
        return ["npx", "--no-install", "buf"]
    return None
