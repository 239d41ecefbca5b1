"""The container image, checked statically (no container runtime here): the Dockerfile's shape,
its OCI labels, a non-root runtime with no shell needed, a .dockerignore that keeps the context
small, and the built binary's dynamic libraries against what the runtime base ships."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from support import REPO_ROOT, zen_binary

DOCKERFILE = REPO_ROOT / "Dockerfile"
#: What gcr.io/distroless/cc-debian12 ships besides the loader: glibc's libraries and libgcc_s.
RUNTIME_LIBS = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2",
                "librt.so.1", "linux-vdso.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}
OCI_LABELS = ("title", "description", "source", "licenses", "version", "revision", "created")


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def test_the_build_is_multi_stage_and_the_runtime_is_small_and_non_root():
    all_stages = stages()
    assert len(all_stages) >= 2, "a build stage and a runtime stage"
    build, runtime = all_stages[0], all_stages[-1]
    assert any(w == "RUN" and "cargo build --release --locked" in r for w, r in build)
    base = runtime[0][1].split()[0]
    assert base.startswith("gcr.io/distroless/cc-debian12"), base
    words = [w for w, _ in runtime]
    assert "RUN" not in words, "the runtime stage runs nothing (it has no shell)"
    user = dict((w, r) for w, r in runtime)["USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    entrypoint = dict((w, r) for w, r in runtime)["ENTRYPOINT"]
    assert entrypoint.startswith("["), "exec form: no shell at run time"
    assert any(w == "COPY" and r.startswith("--from=") for w, r in runtime)
    labels = " ".join(r for w, r in runtime if w == "LABEL")
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels, label
    exposed = " ".join(r for w, r in runtime if w == "EXPOSE").split()
    assert {"7443", "8080", "9464"} <= set(exposed)


def test_every_file_the_build_copies_is_in_the_context():
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, "deny by default"
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from="):
            *sources, _dest = rest.split()
            for source in sources:
                assert source.rstrip("/") in allowed, f"{source} is copied but excluded by .dockerignore"
                assert (REPO_ROOT / source).exists(), source


def test_hadolint_when_available():
    hadolint = shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint is not installed (no Debian package); the checks above stand in")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_binary_needs_only_what_the_runtime_base_ships():
    if not shutil.which("ldd"):
        pytest.skip("ldd is not installed")
    proc = subprocess.run(["ldd", str(zen_binary())], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    needed = set()
    for line in proc.stdout.splitlines():
        name = line.strip().split()[0]
        needed.add(re.sub(r"^.*/", "", name))
    assert needed, proc.stdout
    missing = needed - RUNTIME_LIBS
    assert not missing, f"the runtime base lacks {missing} (ldd: {proc.stdout})"
    assert not any("ssl" in n or "crypto" in n for n in needed), "TLS is rustls: no OpenSSL"
