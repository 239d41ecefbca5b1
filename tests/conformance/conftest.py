"""Fixtures of the conformance suite.

One `zen serve` (the real binary: $ZEN_BIN or ${CARGO_TARGET_DIR:-target}/debug/zen) runs for
the whole session on a fresh temporary data dir and free loopback ports; it generates its
development PKI on first start. At the end it gets SIGTERM and must exit 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import ZenServer, zen_binary  # noqa: E402


def pytest_report_header(config):
    return f"zen binary: {zen_binary()}"


@pytest.fixture(scope="session")
def zen(tmp_path_factory) -> ZenServer:
    """The running server shared by the suite (tests only read from it or create their own data)."""
    server = ZenServer(data_dir=tmp_path_factory.mktemp("zen") / "data").start()
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"zen serve exited {code} after SIGTERM (want 0)\n--- zen output\n{server.log()}"


@pytest.fixture
def admin_channel(zen):
    """A channel with the admin identity the server generated (pki/admin.crt, trusting pki/ca.crt)."""
    channel = zen.channel()
    yield channel
    channel.close()
