#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install medloop with everything it needs.
# Idempotent: a second run installs nothing unless pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MEDLOOP_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.medloop-install-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "medloop: installing into $VENV (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # Without a GPU, take the 2.13.0 CPU wheel, never a multi-GB CUDA build.
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  fi
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
