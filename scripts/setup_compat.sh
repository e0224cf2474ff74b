#!/usr/bin/env bash
# A cached virtual environment with an older transformers release, for the fast suite under it (LLaDA's remote
# code pins 4.38.2, Dream's 4.46.2). Usage: scripts/setup_compat.sh 4.38.2
#
#   MDM_SCHED_COMPAT_VENVS=~/.cache/mdm_sched/compat-venvs   where the environments live: outside the checkout,
#                              so they survive between runs on the same machine (CI clones afresh each time)
#   PYTHON=python3             interpreter used to create them
#   TORCH_SPEC=torch==2.13.0   the torch to install (as in scripts/setup.sh)
#
# The packages are scripts/compat/transformers-VERSION.txt, installed with --no-deps (exactly that list). Installs
# are skipped when neither that list, this script nor TORCH_SPEC changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: scripts/setup_compat.sh TRANSFORMERS_VERSION, e.g. 4.38.2}
pins="scripts/compat/transformers-$version.txt"
if [ ! -f "$pins" ]; then
  echo "[compat] no environment defined for transformers $version: add $pins (see the head of the others)" >&2
  exit 2
fi
venv="${MDM_SCHED_COMPAT_VENVS:-$HOME/.cache/mdm_sched/compat-venvs}/transformers-$version"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp="$venv/.mdm_sched_compat"
want=$( (cat "$pins" scripts/setup_compat.sh; echo "$TORCH_SPEC") | sha256sum | cut -c1-16)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
rm -f "$stamp"
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  "$PYTHON" -m venv "$venv"
fi
# pip warns about every package the machine's extra (file) indexes lack: noise, filtered out.
pip_install() {
  "$venv/bin/python" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
# torch first and from TORCH_SPEC: the pins leave it out, and an unpinned torch is a multi-GB CUDA build.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "[compat] transformers $version: installing $TORCH_SPEC into $venv" >&2
  pip_install "$TORCH_SPEC"
fi
echo "[compat] transformers $version: installing $pins" >&2
pip_install --no-deps -r "$pins"
echo "$want" > "$stamp"
