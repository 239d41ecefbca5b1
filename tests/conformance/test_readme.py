"""The README's quickstart, run literally.

Every ```sh block of README.md marked `<!-- readme-test: run -->` is extracted and run, in
order, in one `bash -euo pipefail`, in a fresh directory, with the freshly built `zen` on PATH
(the one block marked `setup` builds and puts it there for a reader; the test does that part
itself). Nothing in the blocks is rewritten: the test only sets what the README says a reader
may set (other free ports in ZEN_HTTP_ADDR / ZEN_GRPC_ADDR, which the README honours), a
private HOME, and copies `mappings/` (the one repository file the walk-through reads), then
puts a timestamp line between blocks to measure them.

It asserts what a reader is promised: a stored event from the agent, a watched and stored
webhook event whose fields came from the preset mapping, a remediation approved by two people
and executed by the agent's exec hook, a clean stop; and it measures the time from the first
command to the first stored event.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from support import REPO_ROOT, clean_env, free_port, zen_binary

README = REPO_ROOT / "README.md"
#: Bounds the README states (and a reader can hold Zen to).
FIRST_EVENT_BOUND_S = 30.0
TOTAL_BOUND_S = 120.0

MARK = re.compile(r"<!-- readme-test: (run|setup)\b[^>]*-->\s*\n```sh\n(.*?)\n```", re.S)


def quickstart_blocks() -> tuple[list[str], list[str]]:
    text = README.read_text()
    start = text.index("## Quickstart")
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    marked = MARK.findall(section)
    all_sh = re.findall(r"```sh\n", section)
    assert len(marked) == len(all_sh), "every sh block of the quickstart is marked run or setup"
    run = [body for kind, body in marked if kind == "run"]
    setup = [body for kind, body in marked if kind == "setup"]
    return setup, run


def test_the_quickstart_blocks_use_no_tool_a_fresh_debian_lacks():
    setup, run = quickstart_blocks()
    assert len(setup) == 1 and "cargo build --release --bin zen" in setup[0]
    assert len(run) >= 5
    script = "\n".join(run)
    commands = [line.split()[0] for line in script.splitlines() if line.strip()]
    piped = re.findall(r"\|\s*(\S+)", script) + re.findall(r"\$\((\S+)", script)
    for tool in ("uuidgen", "jq", "grpcurl", "openssl", "websocat", "npx", "node", "kubectl"):
        assert tool not in commands + piped, f"the quickstart uses {tool!r}"
    # Every curl that sends a body says it is JSON, and every mutating one has a request id.
    for call in re.findall(r"curl [^\n]*(?:\\\n[^\n]*)*", script):
        if " -d " in call:
            assert "content-type: application/json" in call, call
            if "/webhooks/" not in call:
                assert "x-request-id" in call, call


def test_readme_quickstart_runs_as_written(tmp_path):
    setup, run = quickstart_blocks()
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copytree(REPO_ROOT / "mappings", work / "mappings")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "zen").symlink_to(zen_binary())
    home = tmp_path / "home"
    home.mkdir()

    parts = ['echo "@@block 0 $(date +%s.%N)"']
    for i, block in enumerate(run, start=1):
        parts.append(block)
        parts.append(f'echo "@@block {i} $(date +%s.%N)"')
    script = "\n".join(parts) + "\n"
    (tmp_path / "quickstart.sh").write_text(script)

    env = clean_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        ZEN_HTTP_ADDR=f"127.0.0.1:{free_port()}",
        ZEN_GRPC_ADDR=f"127.0.0.1:{free_port()}",
        ZEN_ADMIN_ADDR=f"127.0.0.1:{free_port()}",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", str(tmp_path / "quickstart.sh")],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TOTAL_BOUND_S + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the quickstart did not finish in time\n{out}\n--- zen.log\n{_log(work)}")
    finally:
        # Whatever the script left running (zen serve, the agent, a watch) goes with it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"the quickstart failed (exit {proc.returncode})\n{out}\n--- zen.log\n{_log(work)}"

    marks = {int(n): float(t) for n, t in re.findall(r"^@@block (\d+) ([0-9.]+)$", out, re.M)}
    assert sorted(marks) == list(range(len(run) + 1)), out
    first_event = marks[2] - marks[0]
    total = marks[len(run)] - marks[0]
    print(f"\nREADME quickstart: first stored event {first_event:.1f}s after the first command; "
          f"whole walk-through {total:.1f}s (wall {elapsed:.1f}s)")

    # 2: the agent's event is stored and listed.
    assert "CVE-2026-0001 in openssl" in out, out
    # 3: curl read the tenant back and created a cluster.
    assert '"name":"staging-1"' in out.replace(" ", ""), out
    # 4: the webhook was accepted, and the watch saw the stored event with the mapped fields.
    assert re.search(r"^\{.*\} 202$", out, re.M), out
    watched = json.loads((work / "watch.json").read_text())
    event = watched["event"]
    assert event["title"] == "A shell was spawned in shop/api-7d9", event
    assert event["type"] == "Terminal shell in container", event
    assert event["severity"] == "SEVERITY_MEDIUM", event
    assert event["resource"]["name"] == "api-7d9", event
    # 5: two approvers other than the proposer, then the agent's hook ran the apply.
    assert "REMEDIATION_STATUS_SUCCEEDED" in out, out
    command = json.loads((work / "last-command.json").read_text())
    assert command["operation"] == "COMMAND_OPERATION_APPLY", command
    assert command["action"]["serverSideApply"]["name"] == "api", command
    assert oct((work / "alice.json").stat().st_mode & 0o777) == "0o600"

    assert first_event < FIRST_EVENT_BOUND_S, f"first event after {first_event:.1f}s"
    assert total < TOTAL_BOUND_S, f"walk-through took {total:.1f}s"


def _log(work: Path) -> str:
    path = work / "zen.log"
    return path.read_text(errors="replace")[-6000:] if path.exists() else "<no zen.log>"
