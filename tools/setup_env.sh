#!/usr/bin/env bash
# Create (or update) the project's virtual environment with everything the
# demo and the test-suite need: torch 2.14.1 with torchvision 0.29.1,
# mmengine 0.10.7, mmcv 2.1.0 built from source with its compiled ops against
# that torch, mmdet 3.3.0, mmsegmentation 1.2.2, mmpretrain 1.2.0, timm, and
# this package in editable mode with its test and docs extras (sphinx,
# myst-parser: tests/test_docs.py builds the documentation site).
#
#   bash tools/setup_env.sh            # venv in ./.venv (override: MMEXT_VENV=...)
#
# Idempotent: a second run only checks what is already installed.
#
# The torch build may be a CUDA one (the registry's torch 2.14.1 is): it runs
# on a machine without a GPU, and on a GPU machine mmcv's ops are built with
# CUDA where nvcc and a GPU are there (mmcv's own rule).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMEXT_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
TORCH_PINS=('torch==2.14.1' 'torchvision==0.29.1')
MMCV_VERSION=2.1.0

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup_env] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# torch first: mmcv's build imports it.
"${PIP[@]}" "${TORCH_PINS[@]}" 'setuptools<81' wheel ninja 'numpy<3' 'mmengine==0.10.7'

# mmcv with compiled ops has no wheel for this torch: build it (8-30 min on
# 2 cores the first time). pip's wheel cache keys a built wheel by mmcv's
# version only, so a wheel built against another torch would be reused and
# fail at `import mmcv._ext`: the wheel is built without pip's cache into a
# folder keyed by mmcv's, torch's and Python's versions, and installed from
# there. torch >= 2.14's headers need C++20, where mmcv 2.1.0's setup.py asks
# for C++17: the build uses mmcv's sdist with that flag raised.
if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  KEY=$("$PY" -c "import sys, torch; print(f'mmcv-$MMCV_VERSION-torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}')")
  WHEELS=${MMEXT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmext_init/wheels}/$KEY
  if ! ls "$WHEELS"/mmcv-*.whl >/dev/null 2>&1; then
    echo "[setup_env] building mmcv $MMCV_VERSION with ops against torch into $WHEELS (slow the first time)"
    SRC=$(mktemp -d)
    "$PY" -m pip download --disable-pip-version-check -q --no-cache-dir --no-deps \
      --no-binary :all: --no-build-isolation -d "$SRC" "mmcv==$MMCV_VERSION"
    tar xzf "$SRC"/mmcv-$MMCV_VERSION.tar.gz -C "$SRC"
    if "$PY" -c "import sys, torch; from packaging.version import parse; sys.exit(0 if parse(torch.__version__) >= parse('2.14') else 1)"; then
      sed -i -e 's/-std=c++17/-std=c++20/g' -e 's#/std:c++17#/std:c++20#g' "$SRC/mmcv-$MMCV_VERSION/setup.py"
    fi
    rm -rf "$WHEELS.tmp" && mkdir -p "$WHEELS.tmp"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} \
      "$PY" -m pip wheel --disable-pip-version-check -q --no-cache-dir \
      --no-build-isolation --no-deps -w "$WHEELS.tmp" "$SRC/mmcv-$MMCV_VERSION"
    rm -rf "$WHEELS" "$SRC" && mv "$WHEELS.tmp" "$WHEELS"
  fi
  "${PIP[@]}" --no-deps --force-reinstall "$WHEELS"/mmcv-*.whl
  "${PIP[@]}" "$WHEELS"/mmcv-*.whl   # its pure-Python requirements
fi

# mmseg imports ftfy and regex (its tokenizer) without declaring them.
"${PIP[@]}" "${TORCH_PINS[@]}" 'mmdet==3.3.0' 'mmsegmentation==1.2.2' \
  'mmpretrain==1.2.0' 'timm==1.0.31' ftfy regex
"${PIP[@]}" --no-build-isolation -e "$ROOT[test,docs]"
"$PY" - <<'EOF'
import torch, torchvision, mmengine, mmcv, mmcv.ops, mmdet, mmseg, mmpretrain, timm
print('[setup_env] torch', torch.__version__, 'torchvision', torchvision.__version__,
      'mmengine', mmengine.__version__, 'mmcv', mmcv.__version__, 'mmdet', mmdet.__version__,
      'mmseg', mmseg.__version__, 'mmpretrain', mmpretrain.__version__, 'timm', timm.__version__)
EOF
echo "[setup_env] ready: source $VENV/bin/activate (or call $VENV/bin/python) to use it"
