#!/usr/bin/env bash
# The main job of README's quick start: install what is missing, generate
# the tiny data and the stock "pretrained" detector checkpoint, then run
# mmdet's own tools/train.py (the copy inside the installed mmdet package) on
# the tiny RetinaNet-with-adapters config for a few iterations. The init
# report is printed; everything else lands under work_dirs/.
#
#   bash tools/demo.sh [CONFIG]    # default: the tiny RetinaNet R18 adapters config
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMEXT_VENV:-$ROOT/.venv}
CONFIG=${1:-configs/mmdet/retinanet_r18_adapters_ft_tiny.py}
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
PY="$VENV/bin/python"
"$PY" tools/make_tiny_data.py --out-dir .
LIB=$(case "$CONFIG" in configs/mmseg/*) echo mmseg ;; *) echo mmdet ;; esac)
TRAIN=$("$PY" -c "import os, $LIB; print(os.path.join(os.path.dirname($LIB.__file__), '.mim', 'tools', 'train.py'))")
NAME=$(basename "$CONFIG" .py)
echo "[demo] $LIB's own train script: $TRAIN"
"$PY" "$TRAIN" "$CONFIG" --work-dir "work_dirs/$NAME" 2>&1 \
  | grep -v -E 'pkg_resources|_bootstrap._exec' \
  | sed -n '/mmext_init: initialization report/,/Iter(train) \[1\//p'
LOG_DIR=$(ls -td "work_dirs/$NAME"/*/ | head -1)
echo "[demo] done: log and init_provenance.json in $LOG_DIR, checkpoint in work_dirs/$NAME"
