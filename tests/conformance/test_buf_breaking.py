"""(g) The contract guard can fail: `buf breaking` flags a renumbered field (exit 100) and
passes an unmodified copy (exit 0)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support import REPO_ROOT, buf_command

BUF_TIMEOUT = 180
FIELD = re.compile(r"^(\s*(?:optional\s+|repeated\s+)?[A-Za-z_][\w.]*\s+(\w+)\s*=\s*)(\d+)(\s*[;\[])")
MESSAGE = re.compile(r"^\s*message\s+(\w+)\s*\{")


@pytest.fixture(scope="module")
def buf():
    command = buf_command()
    if command is None:
        pytest.fail("buf is not installed: run `npm ci` (scripts/test.sh does)")
    return command


def copy_contracts(dest: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "proto", dest / "proto")
    for name in ("buf.yaml", "buf.lock"):
        if (REPO_ROOT / name).exists():
            shutil.copy2(REPO_ROOT / name, dest / name)
    return dest


def renumber_first_field(proto_root: Path) -> tuple[Path, str, str, int, int]:
    """Renumbers the first field of the first message in zen/common/v1 (else any zen file)."""
    candidates = sorted((proto_root / "zen" / "common" / "v1").glob("*.proto")) or sorted(
        (proto_root / "zen").rglob("*.proto")
    )
    for path in candidates:
        lines = path.read_text().splitlines(keepends=True)
        used = {int(m.group(3)) for line in lines if (m := FIELD.match(line))}
        message = None
        for index, line in enumerate(lines):
            if line.lstrip().startswith("//"):
                continue
            if message is None:
                if m := MESSAGE.match(line):
                    message = m.group(1)
                continue
            if m := FIELD.match(line):
                old = int(m.group(3))
                new = max(used) + 100
                lines[index] = f"{m.group(1)}{new}{m.group(4)}{line[m.end():]}"
                path.write_text("".join(lines))
                return path, message, m.group(2), old, new
    raise AssertionError("no zen message with a scalar field to renumber")


def run_buf(buf: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*buf, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=BUF_TIMEOUT
    )


def test_unmodified_copy_is_not_breaking(buf, tmp_path):
    copy = copy_contracts(tmp_path / "same")
    proc = run_buf(buf, "breaking", str(copy), "--against", str(REPO_ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_renumbered_field_is_breaking(buf, tmp_path):
    copy = copy_contracts(tmp_path / "renumbered")
    path, message, field, old, new = renumber_first_field(copy / "proto")
    # The change still compiles: a failure below is a breaking-change finding, not a syntax error.
    built = run_buf(buf, "build", str(copy))
    assert built.returncode == 0, built.stdout + built.stderr
    proc = run_buf(buf, "breaking", str(copy), "--against", str(REPO_ROOT))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 100, (
        f"renumbering {message}.{field} {old} -> {new} in {path.name} was not flagged "
        f"(exit {proc.returncode}):\n{output}"
    )
    assert message in output, output
