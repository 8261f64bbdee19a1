#!/usr/bin/env bash
# Run every benchmark script; each prints one JSON record (ratios against a reference measured in the same run).
set -uo pipefail
PY=${1:-python3}
cd "$(dirname "$0")/.."
status=0
for b in benchmarks/*.py; do
  echo "# $b" >&2
  "$PY" "$b" || status=1
done
exit $status
