#!/usr/bin/env bash
# Create (or update) the OpenMMLab 1.x virtual environment the tests of the
# mmcv 1.x backend (tests/mmcv1) run in: torch 2.14.1 with torchvision
# 0.29.1, mmcv 1.7.2 without compiled ops, mmcls 0.25.0, and this package in
# editable mode with its test extra (which brings mmengine 0.10.7, a
# dependency of mmext-init on both backends: it installs and imports next to
# mmcv 1.x, under other module names).
#
#   bash tools/setup_env_mmcv1.sh      # venv in ./.venv-mmcv1 (override: MMEXT_MMCV1_VENV=...)
#
# Idempotent: a second run only checks what is already installed.
#
# Why no ops: mmcv-full 1.7.2 is an sdist whose ops build takes 10-30 min on
# 2 cores and is untested against torch 2.14; mmcls needs none of them, and
# mmcv 1.7.2's setup.py builds the pure-Python package with MMCV_WITH_OPS=0.
# It imports pkg_resources, so setuptools stays below 81 and the build runs
# without isolation (in this venv's setuptools).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMEXT_MMCV1_VENV:-$ROOT/.venv-mmcv1}
PYTHON=${PYTHON:-python3}
TORCH_PINS=('torch==2.14.1' 'torchvision==0.29.1')
MMCV_VERSION=1.7.2

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup_env_mmcv1] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

"${PIP[@]}" "${TORCH_PINS[@]}" 'setuptools<81' wheel 'numpy<3'
if ! "$PY" -c "import mmcv; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  echo "[setup_env_mmcv1] installing mmcv $MMCV_VERSION without ops"
  MMCV_WITH_OPS=0 "${PIP[@]}" --no-build-isolation "mmcv==$MMCV_VERSION"
fi
"${PIP[@]}" "${TORCH_PINS[@]}" "mmcv==$MMCV_VERSION" 'mmcls==0.25.0'
"${PIP[@]}" --no-build-isolation -e "$ROOT[test]"
"$PY" - <<'PYEOF' 2>/dev/null
import torch, torchvision, mmcv, mmcls, mmengine, mmext_init
print('[setup_env_mmcv1] torch', torch.__version__, 'torchvision',
      torchvision.__version__, 'mmcv', mmcv.__version__, 'mmcls',
      mmcls.__version__, 'mmengine', mmengine.__version__)
PYEOF
echo "[setup_env_mmcv1] ready: $VENV/bin/python"
