#!/usr/bin/env bash
# The main job of README's quick start: install what is missing, generate
# the tiny data and the stock "pretrained" checkpoints, then run the library's
# own tools/train.py (the copy inside the installed mmdet/mmseg package) on a
# tiny config with adapters for a few iterations. Prints the init report and
# the training iterations; the full output, log, init_provenance.json and
# checkpoint land under work_dirs/<config name>/.
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
WORK_DIR="work_dirs/$NAME"
OUT="$WORK_DIR/train_output.txt"
mkdir -p "$WORK_DIR"
echo "[demo] $LIB's own train script: $TRAIN $CONFIG --work-dir $WORK_DIR"
if ! "$PY" "$TRAIN" "$CONFIG" --work-dir "$WORK_DIR" >"$OUT" 2>&1; then
  tail -n 60 "$OUT" >&2
  echo "[demo] training failed; full output in $OUT" >&2
  exit 1
fi
# The init report (from its first line to the next log record), then the
# training iterations.
awk '/mmext_init: initialization report/ {on=1; print; next}
     on && /^[0-9][0-9]\/[0-9][0-9] [0-9:]+ - mmengine - / {on=0}
     on {print}
     /Iter\(train\)/ {print}' "$OUT"
grep -q 'mmext_init: initialization report' "$OUT" || {
  echo "[demo] no init report in the output: is mmext_init imported?" >&2
  exit 1
}
ERROR_LINE=' - (.\[[0-9;]*m)*ERROR(.\[[0-9;]*m)* - '  # colour codes or not
if grep -Eq "$ERROR_LINE" "$OUT"; then
  grep -E "$ERROR_LINE" "$OUT" >&2
  echo "[demo] the run logged errors (above); full output in $OUT" >&2
  exit 1
fi
LOG_DIR=$(ls -td "$WORK_DIR"/*/ | head -1)
echo "[demo] done: log and init_provenance.json in $LOG_DIR, checkpoint in $WORK_DIR, full output in $OUT"
echo "[demo] to run the other commands of README.md: source $VENV/bin/activate (or call $VENV/bin/python)"
