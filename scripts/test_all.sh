#!/usr/bin/env bash
# `make test` (CI's command): lint, then the main suite (-m "not gpu") and the fast transformers-touching tests under
# each older release (scripts/test_compat.sh) side by side, one torch thread each: on 2 cores this takes about
# half the wall time of running them one after the other. Each run's output is kept and printed when all are done.
# Usage: scripts/test_all.sh "COMPAT RELEASES" [pytest arguments for the main suite]
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
releases=${1-}
shift || true
"$VENV/bin/ruff" check . || exit 1
for v in $releases; do bash scripts/setup_compat.sh "$v" || exit 1; done  # installs first, never concurrently
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
names=(main) pids=()
"$VENV/bin/python" -m pytest -m "not gpu" "$@" > "$logs/main.log" 2>&1 &
pids+=($!)
for v in $releases; do
  bash scripts/test_compat.sh "$v" > "$logs/$v.log" 2>&1 &
  pids+=($!) names+=("$v")
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; rc=$?
  label=${names[$i]}; [ "$label" = main ] && label="main suite" || label="transformers $label (scripts/test_compat.sh)"
  echo "======== $label: exit $rc ========"
  cat "$logs/${names[$i]}.log"
  [ "$rc" -eq 0 ] || status=1
done
exit $status
