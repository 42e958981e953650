#!/usr/bin/env bash
# Create (or update) the project's virtual environment with everything the
# demo and the test-suite need: torch 2.13.0 (CPU), mmengine 0.10.7, mmcv 2.1.0
# built from source with its compiled ops, mmdet 3.3.0, mmsegmentation 1.2.2,
# and this package in editable mode with its test extras.
#
#   bash tools/setup_env.sh            # venv in ./.venv (override: MMEXT_VENV=...)
#
# Idempotent: a second run only checks what is already installed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMEXT_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup_env] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# torch first: mmcv's build imports it. Never let pip pick a CUDA build.
"${PIP[@]}" 'torch==2.13.0' 'setuptools<81' wheel ninja 'numpy<3' 'mmengine==0.10.7'
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)'; then
  echo "[setup_env] a CUDA build of torch was installed; expected the CPU wheel" >&2
  exit 1
fi

# mmcv with compiled ops has no wheel for this torch: build it (17 min measured
# on 2 cores, allow 30, the first time; pip's wheel cache makes later installs
# fast).
if ! "$PY" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; then
  echo "[setup_env] building mmcv 2.1.0 with ops (slow the first time)"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} FORCE_CUDA=0 \
    "${PIP[@]}" --no-build-isolation 'mmcv==2.1.0'
fi

# mmseg imports ftfy and regex (its tokenizer) without declaring them.
"${PIP[@]}" 'mmdet==3.3.0' 'mmsegmentation==1.2.2' ftfy regex
"${PIP[@]}" --no-build-isolation -e "$ROOT[test]"
"$PY" -c 'import torch, mmengine, mmcv, mmcv.ops, mmdet, mmseg; print("[setup_env] torch", torch.__version__, "mmengine", mmengine.__version__, "mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmseg", mmseg.__version__)'
echo "[setup_env] ready: source $VENV/bin/activate (or call $VENV/bin/python) to use it"
