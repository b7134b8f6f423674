#!/usr/bin/env bash
# Set everything up (scripts/setup.sh) and run the demo campaign: `medloop demo [options]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/medloop demo "$@"
