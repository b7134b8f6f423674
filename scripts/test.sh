#!/usr/bin/env bash
# Set everything up and run the whole test suite, the way CI does.
#   - medloop and its dependencies in .venv (scripts/setup.sh)
#   - lint (ruff) and type check (mypy, scripts/typecheck.sh): any finding fails the run
#   - Label Studio's server in its own venv (.medloop/labelstudio-venv) for the labeling tests
#   - Debian's chromium for the dashboard browser test (when run as root; skipped otherwise)
#   - Debian's postgresql for the ledger tests on PostgreSQL (when run as root; skipped otherwise);
#     the tests start a throwaway server of their own (tests/ledger_backends.py), never the system one
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "medloop: ruff check ." >&2
.venv/bin/ruff check .
echo "medloop: mypy (scripts/typecheck.sh)" >&2
bash scripts/typecheck.sh
.venv/bin/medloop labelstudio install || echo "medloop: Label Studio could not be installed; its tests will skip" >&2
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "medloop: chromium could not be installed; the browser test will skip" >&2
fi
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "medloop: postgresql could not be installed; the PostgreSQL ledger tests will skip" >&2
fi
mkdir -p test-output
exec .venv/bin/python -m pytest "$@"
