#!/usr/bin/env bash
# Zen's reliability drills, the whole set in one command (docs/RELIABILITY.md):
#
#   bash scripts/drills.sh            # every drill once, the soak for 3 minutes
#   bash scripts/drills.sh --twice    # every drill twice in a row (what "passes" means)
#   bash scripts/drills.sh --soak     # the soak for 30 minutes (ZEN_SOAK_SECONDS to change it)
#   bash scripts/drills.sh --release  # against a release build of `zen`
#
# Each drill is a test over the real `zen` binary with real PostgreSQL and Redis (the ones of
# scripts/test.sh, started when down) and private ones it starts itself; each prints its
# figures and fails on any loss. `.ci/run` runs all of them once (through scripts/test.sh),
# with the 3-minute soak.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS=1
PROFILE=()
export ZEN_SOAK_SECONDS="${ZEN_SOAK_SECONDS:-180}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --twice) ROUNDS=2 ;;
        --soak) ZEN_SOAK_SECONDS="${ZEN_SOAK_SECONDS_FULL:-1800}" ;;
        --release) PROFILE=(--release) ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
ensure_services

# name: what it proves
DRILLS=(
    "kill_replica: kill -9 of a replica every 3 s under webhook and agent load"
    "drain: a replica drained with SIGTERM under load, its streams moving on"
    "three_replicas: replay protection, idempotency, rate limits, dispatch across replicas"
    "gateway_ws: watchers on three replicas see every event once, in order"
    "db_outage: PostgreSQL stopped 15 s, and restarted, under load"
    "redis_outage: Redis stopped 30 s, and restarted, under load"
    "redis_failover: Redis Cluster and Sentinel failovers under load"
    "read_replica: lists on a streaming standby, and off it when it lags or stops"
    "disk_full: SQLite on a volume that fills up, then is read-only"
    "stuck_watchers: 200 WebSocket watchers that never read"
    "soak: half the peak for ZEN_SOAK_SECONDS with nothing growing"
)

START=$SECONDS
RESULTS=()
for round in $(seq 1 "$ROUNDS"); do
    for drill in "${DRILLS[@]}"; do
        name="${drill%%:*}"
        printf '\n==> round %s: %s\n' "$round" "$drill"
        started=$SECONDS
        # (pipefail: the status is cargo's; the filter only hides the servers' JSON logs)
        if cargo test "${PROFILE[@]}" --test "$name" -- --nocapture --test-threads 1 2>&1 \
            | grep -v '^{"timestamp'; then
            status=passed
        else
            status=FAILED
        fi
        RESULTS+=("$(printf '%-6s round %s  %4ss  %s' "$status" "$round" $((SECONDS - started)) "$name")")
        if [[ $status == FAILED ]]; then
            printf '\n%s\n' "${RESULTS[@]}"
            echo "drills: $name failed in round $round" >&2
            exit 1
        fi
    done
done
printf '\n==> drills\n'
printf '  %s\n' "${RESULTS[@]}"
echo "drills: all passed ($ROUNDS round(s), $((SECONDS - START)) s)"
