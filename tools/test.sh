#!/usr/bin/env bash
# The test command of README.md: installs what is missing (tools/setup_env.sh,
# tools/setup_env_mmcv1.sh), then runs the whole suite (unit, real
# mmdet/mmseg models, end-to-end train runs, and the docstring examples of
# the package) in the MMEngine venv, then the OpenMMLab 1.x suite
# (tests/mmcv1 and the examples of mmext_init/mmcv1) in the mmcv 1.x venv;
# it fails if either fails. Extra arguments go to both pytest runs, e.g.
# `bash tools/test.sh -k contract` (a run they select nothing in passes).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMEXT_VENV:-$ROOT/.venv}
MMCV1_VENV=${MMEXT_MMCV1_VENV:-$ROOT/.venv-mmcv1}
bash "$ROOT/tools/setup_env.sh" || exit 1
bash "$ROOT/tools/setup_env_mmcv1.sh" || exit 1
cd "$ROOT"

# pytest's exit code, with "nothing selected" (5) a pass when arguments
# narrowed the run
run() {
  "$@" && return 0
  local code=$?
  if [ "$code" -eq 5 ] && [ "$NARROWED" -eq 1 ]; then return 0; fi
  return "$code"
}
NARROWED=$([ $# -gt 0 ] && echo 1 || echo 0)

# mmext_init/mmcv1 imports mmcv 1.x: its examples run in the second venv
# (conftest.py leaves them out of the first run)
run "$VENV/bin/python" -m pytest tests mmext_init --doctest-modules -q "$@"
MAIN=$?
echo "[test] OpenMMLab 1.x suite in $MMCV1_VENV"
MMEXT_MAIN_PYTHON="$VENV/bin/python" run "$MMCV1_VENV/bin/python" -m pytest \
  tests/mmcv1 mmext_init/mmcv1 --doctest-modules -q "$@"
MMCV1=$?
echo "[test] MMEngine suite: exit $MAIN; OpenMMLab 1.x suite: exit $MMCV1"
[ "$MAIN" -eq 0 ] && [ "$MMCV1" -eq 0 ]
