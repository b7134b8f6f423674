#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install medloop with everything it needs.
# Idempotent: a second run installs nothing unless pyproject.toml or this script changed.
#
# PyTorch (docs/installation.md): with a GPU (nvidia-smi lists one) torch comes from the default index
# with medloop (on Linux that is the CUDA build); without one, torch==$MEDLOOP_TORCH_VERSION is taken
# from PyTorch's CPU wheel index where it answers (never a multi-GB CUDA build), else from the default
# index. MEDLOOP_TORCH_INDEX=<index URL> chooses the index yourself (a CUDA version, a mirror).
#   scripts/setup.sh --print-torch   prints the choice for this machine and installs nothing
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MEDLOOP_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_VERSION=${MEDLOOP_TORCH_VERSION:-2.13.0}
CPU_INDEX=${MEDLOOP_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

has_gpu() {  # nvidia-smi present and listing at least one GPU
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

index_answers() {  # the index serves a torch page within 10 s
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10) as r:
    sys.exit(0 if r.status == 200 else 1)
PYEOF
}

# The torch install for this machine: a line "<why>" then the pip arguments, one per line (none: torch
# comes with medloop from the default index).
torch_plan() {
  if [ -n "${MEDLOOP_TORCH_INDEX:-}" ]; then
    printf '%s\n' "index chosen by MEDLOOP_TORCH_INDEX" "torch==$TORCH_VERSION" --index-url "$MEDLOOP_TORCH_INDEX"
  elif has_gpu; then
    printf '%s\n' "GPU found: torch with medloop from the default index (CUDA build)"
  elif index_answers "$CPU_INDEX"; then
    printf '%s\n' "no GPU: CPU wheel from $CPU_INDEX" "torch==$TORCH_VERSION" --index-url "$CPU_INDEX"
  else
    printf '%s\n' "no GPU, $CPU_INDEX does not answer: torch from the default index" "torch==$TORCH_VERSION"
  fi
}

if [ "${1:-}" = "--print-torch" ]; then
  torch_plan | { read -r why; args=$(paste -sd ' ' -); echo "$why"; echo "pip install ${args:-(nothing separate)}"; }
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.medloop-install-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "medloop: installing into $VENV (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  mapfile -t plan < <(torch_plan)
  echo "medloop: torch: ${plan[0]}" >&2
  if [ "${#plan[@]}" -gt 1 ]; then
    "$VENV/bin/python" -m pip install -q "${plan[@]:1}"
  fi
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
