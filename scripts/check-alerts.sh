#!/usr/bin/env bash
# Renders the chart's PrometheusRule and checks it with Prometheus' own tools:
# `promtool check rules` and `promtool test rules` (helm/zen/tests/alerts_test.yaml).
#   ZEN_HELM   the helm binary (scripts/test.sh sets it; default: helm on PATH)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELM="${ZEN_HELM:-helm}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$HELM" template zen "$ROOT/helm/zen" --set metrics.prometheusRule.enabled=true \
    --show-only templates/prometheusrule.yaml >"$WORK/rule.yaml"
# promtool reads plain rule files: the CRD's spec is one.
python3 - "$WORK/rule.yaml" "$WORK/rules.yaml" <<'PY'
import json, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
json.dump(doc["spec"], open(sys.argv[2], "w"))
PY
promtool check rules "$WORK/rules.yaml"
cp "$ROOT/helm/zen/tests/alerts_test.yaml" "$WORK/"
promtool test rules "$WORK/alerts_test.yaml"
