#!/usr/bin/env bash
# Run every xaiclip command that exists on the embedded default (toy model, toy cells) and print the results.
set -euo pipefail
X=${1:-xaiclip}
OUT=${2:-demo_out}
rm -rf "$OUT"; mkdir -p "$OUT"
run() { echo; echo "\$ xaiclip $*"; "$X" "$@"; }

run --version
run --help
