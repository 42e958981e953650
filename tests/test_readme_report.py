"""tools/readme_report.py: README's example report is the report the demo
prints (e2e: a real Runner on the tiny config and its stock checkpoint),
and ``--check`` / ``--update`` find and fix a drifted block."""
import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, 'tools', 'readme_report.py')
README = os.path.join(REPO, 'README.md')
_spec = importlib.util.spec_from_file_location('readme_report', TOOL)
readme_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_report)

REPORT = ('mmext_init: initialization report for RetinaNet: 2 tensors\n'
          '  checkpoint  1 tensors\n'
          'loaded:\n  backbone.conv1.weight <- checkpoint x.pth')
DOC = ('# Title\n\nOne summary:\n\n<!-- report:begin -->\n```\nold report\n'
       '```\n<!-- report:end -->\n\nFurther sections...\n')


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory) -> str:
    """The e2e tests' tiny data directory (tests/e2e/conftest.py's
    ``tiny_dir`` uses the same path): what they made is reused."""
    path = tmp_path_factory.getbasetemp() / 'tiny'
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture(scope='module')
def demo_report(tiny_data_dir) -> str:
    """The report printed by ``python tools/readme_report.py``."""
    proc = subprocess.run([sys.executable, TOOL, '--data-dir', tiny_data_dir],
                          capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout[:-1]  # print's newline


@pytest.mark.e2e
def test_readme_example_is_the_demo_report(demo_report):
    diff = readme_report.check(README, demo_report)
    assert diff is None, (
        'README.md\'s example report is not what the demo prints; run '
        f'python tools/readme_report.py --update\n{diff}')


@pytest.mark.e2e
def test_report_is_the_tiny_fine_tuning_one(demo_report):
    """What the README example must show: the backbone loaded from the
    stock detector checkpoint, the adapters missing and initialized."""
    lines = demo_report.splitlines()
    assert lines[0].startswith(
        'mmext_init: initialization report for RetinaNet: ')
    load = [line for line in lines if line.startswith('load backbone <- ')]
    assert len(load) == 1
    assert load[0].startswith("load backbone <- checkpoints/"
                              "retinanet_r18_stock_tiny.pth [prefix="
                              "'backbone.'] via Pretrained: ")
    assert any(line.startswith('  missing (not in checkpoint): '
                               'backbone.adapters.') for line in lines)
    assert 'initialized:' in lines


def test_update_rewrites_only_the_block(tmp_path):
    path = tmp_path / 'README.md'
    path.write_text(DOC)
    assert readme_report.update(str(path), REPORT) is True
    text = path.read_text()
    assert text == DOC.replace('old report\n', REPORT + '\n')
    assert readme_report.check(str(path), REPORT) is None
    assert readme_report.update(str(path), REPORT) is False  # idempotent
    assert path.read_text() == text
    assert not os.path.exists(str(path) + '.tmp')


def test_check_gives_a_diff_of_the_drift(tmp_path):
    path = tmp_path / 'README.md'
    path.write_text(DOC)
    diff = readme_report.check(str(path), REPORT)
    assert '-old report\n' in diff
    assert '+  checkpoint  1 tensors\n' in diff
    assert path.read_text() == DOC  # --check never writes


@pytest.mark.parametrize('doc, found', [
    ('no markers\n', '0 and 0'),
    (DOC + '<!-- report:begin -->\n', '2 and 1'),
    ('<!-- report:end -->\n<!-- report:begin -->\n', '1 and 1'),
])
def test_markers_missing_or_out_of_order_are_an_error(tmp_path, doc, found):
    path = tmp_path / 'README.md'
    path.write_text(doc)
    with pytest.raises(SystemExit, match=f'README.md: expected one .* '
                       f'found {found}'):
        readme_report.update(str(path), REPORT)
    assert path.read_text() == doc


def test_cli_check_exits_1_and_update_fixes(tmp_path, monkeypatch, capsys):
    """``main`` with the report itself replaced (the e2e tests above build
    the real one): --check exits 1 with the diff, --update rewrites."""
    path = tmp_path / 'README.md'
    path.write_text(DOC)
    monkeypatch.setattr(readme_report, 'demo_report', lambda data_dir: REPORT)
    assert readme_report.main(['--check', '--readme', str(path)]) == 1
    out = capsys.readouterr().out
    assert '-old report' in out and '--update' in out
    assert readme_report.main(['--update', '--readme', str(path)]) == 0
    assert readme_report.main(['--check', '--readme', str(path)]) == 0
    assert 'is the demo report' in capsys.readouterr().out


def test_readme_has_the_markers():
    with open(README) as f:
        begin, end = readme_report.block_bounds(f.read(), README)
    assert begin < end
