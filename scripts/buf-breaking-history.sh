#!/usr/bin/env bash
# buf breaking over history: for each consecutive pair (P, C) on the first-parent history of
# HEAD (at most DEPTH commits back) where both commits carry the contracts (buf.yaml), check
# that C does not break P. Uncommitted changes to the contracts are checked against HEAD too.
#
#   bash scripts/buf-breaking-history.sh [DEPTH]      (default 200)
#
# Each commit's contracts (buf.yaml, buf.lock, proto/) are exported with `git archive` into a
# temp dir and compared as two directory inputs (`buf breaking DIR_C --against DIR_P`), which
# works for a v2 buf.yaml at the root with `modules: [{path: proto}]` without any checkout.
# Pairs whose contracts did not change are skipped. A commit that breaks the contracts on
# purpose says so with the trailer `Buf-Breaking: allow` in its message.
# Exits 100 when a pair breaks, 0 otherwise (also when there is no earlier commit to compare).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEPTH="${1:-200}"
BUF="${BUF:-$ROOT/node_modules/.bin/buf}"
[[ -x "$BUF" ]] || { echo "error: buf is not installed at $BUF (run npm ci)" >&2; exit 1; }

# The paths that make up the buf workspace.
CONTRACT_PATHS=(buf.yaml buf.lock proto)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

has_contracts() { git cat-file -e "$1:buf.yaml" 2>/dev/null; }

# export COMMIT -> prints the directory holding that commit's contracts.
export_commit() {
    local commit="$1" dir="$WORK/$1" paths=() p
    if [[ ! -d "$dir" ]]; then
        mkdir -p "$dir"
        for p in "${CONTRACT_PATHS[@]}"; do
            git cat-file -e "$commit:$p" 2>/dev/null && paths+=("$p")
        done
        git archive --format=tar "$commit" -- "${paths[@]}" | tar -x -C "$dir"
    fi
    echo "$dir"
}

contracts_changed() { ! git diff --quiet "$1" "$2" -- "${CONTRACT_PATHS[@]}"; }

short() { git log -1 --format='%h %s' "$1" | cut -c1-72; }

failed=0
checked=0
unchanged=0
allowed=0

if ! git rev-parse --verify -q HEAD >/dev/null; then
    echo "buf breaking: no commits yet: nothing to compare against (skipped)"
    exit 0
fi

# Uncommitted changes (local runs): the work tree against HEAD.
if has_contracts HEAD && [[ -f buf.yaml ]] \
    && [[ -n "$(git status --porcelain -- "${CONTRACT_PATHS[@]}")" ]]; then
    echo "-- work tree against HEAD ($(short HEAD))"
    checked=$((checked + 1))
    if ! "$BUF" breaking "$ROOT" --against "$(export_commit "$(git rev-parse HEAD)")"; then
        echo "   BREAKING: uncommitted changes break the contracts of HEAD" >&2
        failed=1
    fi
fi

mapfile -t commits < <(git rev-list --first-parent --max-count="$((DEPTH + 1))" HEAD)
for ((i = 0; i + 1 < ${#commits[@]}; i++)); do
    c="${commits[$i]}"
    p="${commits[$((i + 1))]}"
    has_contracts "$c" || continue
    has_contracts "$p" || continue
    if ! contracts_changed "$p" "$c"; then
        unchanged=$((unchanged + 1))
        continue
    fi
    if git log -1 --format=%B "$c" | grep -qiE '^Buf-Breaking:[[:space:]]*allow'; then
        echo "-- $(short "$c"): marked Buf-Breaking: allow (skipped)"
        allowed=$((allowed + 1))
        continue
    fi
    echo "-- $(short "$c")  against  $(short "$p")"
    checked=$((checked + 1))
    dir_c="$(export_commit "$c")"
    dir_p="$(export_commit "$p")"
    # Findings name repository paths (proto/zen/...), not the temp dir.
    if ! "$BUF" breaking "$dir_c" --against "$dir_p" 2>&1 | sed "s|$WORK/[0-9a-f]*/||g"; then
        echo "   BREAKING: $(short "$c") breaks the contracts of its parent" >&2
        failed=1
    fi
done

if [[ $checked -eq 0 && $unchanged -eq 0 && $allowed -eq 0 ]]; then
    echo "buf breaking: no earlier commit carries the contracts: nothing to compare against (skipped)"
else
    echo "buf breaking: $checked pair(s) checked, $unchanged without contract changes, $allowed allowed breaks"
fi
if [[ $failed -ne 0 ]]; then
    exit 100
fi
