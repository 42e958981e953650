#!/usr/bin/env bash
# The test command of README.md: installs what is missing (tools/setup_env.sh),
# then runs the whole suite (unit, real mmdet/mmseg models, end-to-end train
# runs, and the docstring examples of the package). Extra arguments go to pytest, e.g. `bash tools/test.sh -k contract`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMEXT_VENV:-$ROOT/.venv}
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest tests mmext_init --doctest-modules -q "$@"
