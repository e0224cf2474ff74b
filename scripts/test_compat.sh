#!/usr/bin/env bash
# The fast tests of every file that touches transformers (scripts/compat/tests.txt; -m "not slow and not gpu")
# under an older transformers release, in its cached environment (scripts/setup_compat.sh), against this
# checkout's code. Usage: scripts/test_compat.sh 4.38.2 [pytest args]; test paths among the args replace the list.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: scripts/test_compat.sh TRANSFORMERS_VERSION [pytest arguments]}
shift
bash scripts/setup_compat.sh "$version"
venv="${MDM_SCHED_COMPAT_VENVS:-$HOME/.cache/mdm_sched/compat-venvs}/transformers-$version"
targets=()
[[ " $* " == *" tests/"* ]] || mapfile -t targets < <(grep -v '^#' scripts/compat/tests.txt | grep .)
echo "[compat] transformers $version: ${#targets[@]} test files (scripts/compat/tests.txt)" >&2
# MDM_SCHED_EXPECT_TRANSFORMERS: tests/conftest.py refuses to run under any other release (no silent fallback).
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MDM_SCHED_EXPECT_TRANSFORMERS="$version" \
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  "$venv/bin/python" -m pytest -m "not slow and not gpu" -p no:cacheprovider "${targets[@]}" "$@"
