#!/usr/bin/env bash
# Type-check the medloop package with mypy (configuration: [tool.mypy] in pyproject.toml).
# mypy knows nothing of setuptools' package-dir mapping, so this joins the four folders into one
# `medloop` package as a tree of symlinks under build/mypy/ (rebuilt every run, so new files count):
#   build/mypy/medloop/<each entry of platform/medloop>, .../trainers, .../labeling, .../dashboard
# Arguments are passed to mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/mypy/medloop
rm -rf build/mypy
mkdir -p "$tree"
for entry in platform/medloop/*; do
  [ "$(basename "$entry")" = __pycache__ ] || ln -s "../../../$entry" "$tree/"
done
for folder in trainers labeling dashboard; do
  ln -s "../../../$folder" "$tree/$folder"
done
exec "${MYPY:-.venv/bin/mypy}" "$@"
