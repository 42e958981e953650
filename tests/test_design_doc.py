"""docs/design.md's patch table names every row of ``all_rows()``: each owner
and attribute (the schemes of ``CheckpointLoader`` by name), and nothing
else. The MMEngine rows come from this environment; the mmcv 1.x rows are
registered only where mmcv 1.x is installed, so they come from
``all_rows()`` run in the mmcv 1.x venv (``$MMEXT_MMCV1_VENV``, default
``.venv-mmcv1``, set up by ``tools/setup_env_mmcv1.sh``): mmcv 1.x and
2.x cannot share one environment."""
import json
import os
import re
import subprocess
from typing import List, Tuple

import pytest

from mmext_init.plugin.patches import all_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = os.path.join(REPO, 'docs', 'design.md')
ROWS_SCRIPT = """
import json
import mmext_init
from mmext_init.mmcv1 import mmcv1_installed
from mmext_init.plugin.patches import all_rows
assert mmcv1_installed(), 'no mmcv 1.x in this environment'
print(json.dumps([(p.owner_name, p.attribute) for p in all_rows()]))
"""


def table_rows() -> list:
    with open(DESIGN) as f:
        text = f.read()
    table = text.split('| owner | attribute | why |')[1].split('\n\n')[0]
    return [line for line in table.splitlines()[2:] if line.startswith('|')]


def mmcv1_python() -> str:
    """The mmcv 1.x venv's python; missing is a failure naming its setup."""
    venv = os.environ.get('MMEXT_MMCV1_VENV',
                          os.path.join(REPO, '.venv-mmcv1'))
    python = os.path.join(venv, 'bin', 'python')
    assert os.path.isfile(python), (
        f'no mmcv 1.x venv at {venv}: run bash tools/setup_env_mmcv1.sh '
        '(or set MMEXT_MMCV1_VENV)')
    return python


@pytest.fixture(scope='module')
def rows() -> List[Tuple[str, str]]:
    """(owner, attribute) of every row of both backends' ``all_rows()``."""
    proc = subprocess.run([mmcv1_python(), '-c', ROWS_SCRIPT], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mmcv1 = [tuple(r) for r in json.loads(proc.stdout.splitlines()[-1])]
    here = [(p.owner_name, p.attribute) for p in all_rows()]
    assert any(o.startswith('mmcv.') for o, _ in mmcv1)
    return here + [r for r in mmcv1 if r not in here]


def test_every_patch_is_in_the_design_table(rows):
    table = table_rows()
    for owner_name, attribute in rows:
        owner = f'`{owner_name}`'
        scheme = re.sub(r'^\(\\S\+\\:\)\?', '', attribute)
        # an Effect over several names (``'Zero, Identity'``): each named
        names = [f'`{n}`' for n in scheme.split(', ')] if scheme else ["`''`"]
        assert any(owner in r.split('|')[1] and
                   all(n in r.split('|')[2] for n in names)
                   for r in table), (owner_name, attribute)


def test_the_table_names_nothing_else(rows):
    owners = {owner for owner, _ in rows}
    for row in table_rows():
        named = set(re.findall(r'`([^`]+)`', row.split('|')[1]))
        assert named and named <= owners, row
