"""The ledger and report are the same on both backends: one model code
(``report_model.py``) on mmcv 1.x's ``BaseModule`` here and on MMEngine's
in the main venv (``MMEXT_MAIN_PYTHON``, default ``.venv/bin/python``),
one checkpoint."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SCRIPT = HERE / 'report_model.py'
MAIN_PYTHON = os.environ.get(
    'MMEXT_MAIN_PYTHON', str(HERE.parent.parent / '.venv' / 'bin' / 'python'))


def _run(python: str, backend: str, checkpoint: Path, out: Path) -> dict:
    subprocess.run([python, str(SCRIPT), backend, str(checkpoint), str(out)],
                   check=True, capture_output=True, text=True, cwd=HERE)
    return json.loads(out.read_text())


@pytest.mark.skipif(not os.path.isfile(MAIN_PYTHON),
                    reason=f'no MMEngine venv at {MAIN_PYTHON}')
def test_report_and_ledger_equal_across_backends(tmp_path):
    sys.path.insert(0, str(HERE))
    import report_model
    checkpoint = tmp_path / 'trunk.pth'
    report_model.make(str(checkpoint))
    mmcv1 = _run(sys.executable, 'mmcv1', checkpoint, tmp_path / 'a.json')
    mmengine = _run(MAIN_PYTHON, 'mmengine', checkpoint, tmp_path / 'b.json')
    assert 'trunk.block.weight' in mmcv1['entries']
    assert mmcv1['entries']['trunk.adapters.0.conv.weight'].startswith(
        'Constant')
    assert mmcv1['report'] == mmengine['report']
    assert mmcv1['entries'] == mmengine['entries']
    assert mmcv1['values'] == mmengine['values']
