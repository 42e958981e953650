"""The package as users get it: the sdist and the wheel built from it
(``python -m build``, no isolation: the stack is installed), ``twine
check``ed, the wheel installed with ``--no-deps`` into a fresh venv that sees
the stack through a ``.pth`` file, and its console scripts run on an example
config of the wheel's own package data (``mmext_init/.mim/configs``) with
checkpoints generated here."""
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from mmext_init.tools import check_function_preserving as cfp

pytestmark = pytest.mark.e2e  # about 60 s: build, venv, two tool runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ('mmext-match', 'mmext-merge', 'mmext-check', 'mmext-zoo-sweep',
           'mmext-bench')
STOCK = 'checkpoints/segformer_mit_stock_tiny.pth'  # the configs' path


def run(command, **kwargs) -> subprocess.CompletedProcess:
    """``command``, its output as text; fails the test on exit status."""
    proc = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (command, proc.stdout[-3000:],
                                  proc.stderr[-3000:])
    return proc


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> str:
    """The wheel, built from the sdist (what an sdist user builds)."""
    dist = tmp_path_factory.mktemp('dist')
    run([sys.executable, '-m', 'build', '--no-isolation', '--outdir',
         str(dist), REPO])
    files = sorted(os.listdir(dist))
    assert len(files) == 2 and files[0].endswith('.whl') and \
        files[1].endswith('.tar.gz'), files
    proc = run([sys.executable, '-m', 'twine', 'check', '--strict',
                *[str(dist / f) for f in files]])
    assert proc.stdout.count('PASSED') == 2, proc.stdout
    return str(dist / files[0])


@pytest.fixture(scope='module')
def venv(wheel, tmp_path_factory) -> str:
    """A fresh venv holding only the wheel (``--no-deps``), the stack of
    this interpreter visible through a ``.pth`` file after it."""
    path = str(tmp_path_factory.mktemp('venv'))
    run([sys.executable, '-m', 'venv', '--without-pip', path])
    python = os.path.join(path, 'bin', 'python')
    run([sys.executable, '-m', 'pip', '--python', python, 'install',
         '--no-deps', '--no-index', '--disable-pip-version-check', wheel])
    site = run([python, '-c', 'import sysconfig; '
                "print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    with open(os.path.join(site, 'zz_stack.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    return path


def test_wheel_contents(wheel):
    """The package with its examples and configs; no top-level
    ``mmext_examples``, no tests; the five console scripts."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = [n for n in names if n.endswith('.dist-info/entry_points.txt')]
        entry_points = archive.read(info[0]).decode()
    tops = {n.split('/')[0] for n in names}
    assert {t for t in tops if not t.endswith('.dist-info')} == \
        {'mmext_init'}
    assert not any(n.startswith(('tests/', 'mmext_examples')) for n in names)
    assert 'mmext_init/examples/mmseg_models.py' in names
    configs = [n for n in names if n.startswith('mmext_init/.mim/configs/')]
    repo = sorted(os.path.join(root, f)[len(REPO) + 1:]
                  for root, _, files in os.walk(os.path.join(REPO, 'configs'))
                  for f in files if f.endswith('.py'))
    assert sorted(n[len('mmext_init/.mim/'):] for n in configs) == repo
    for script in SCRIPTS:
        assert re.search(rf'^{script} = mmext_init\.tools\.\w+:main$',
                         entry_points, re.M), script


def venv_python(venv: str, code: str) -> str:
    return run([os.path.join(venv, 'bin', 'python'), '-c', code],
               cwd=venv).stdout


def test_the_venv_imports_the_wheel(venv):
    """The venv's mmext_init is the wheel's, not the checkout's editable
    install, and its configs are the package data."""
    out = venv_python(venv, 'import mmext_init, mmext_init.tools as t; '
                      'print(mmext_init.__file__); '
                      'print(t.example_configs())').split('\n')
    assert out[0].startswith(venv + os.sep), out
    assert out[1] == os.path.join(os.path.dirname(out[0]), '.mim',
                                  'configs')


def stock_segmentor(cwd: str) -> dict:
    """The stock tiny SegFormer's state dict, saved where the example
    configs' ``Pretrained`` entries read it (relative to ``cwd``)."""
    cfg = Config.fromfile(os.path.join(REPO, 'configs', 'mmseg',
                                       'segformer_mit_stock_tiny.py'))
    init_default_scope('mmseg')
    state = MODELS.build(cfg.model).state_dict()
    os.makedirs(os.path.join(cwd, 'checkpoints'), exist_ok=True)
    torch.save({'state_dict': state}, os.path.join(cwd, STOCK))
    return state


def test_console_scripts_on_the_packaged_configs(venv, tmp_path,
                                                 monkeypatch):
    """``mmext-match`` dry-runs the packaged adapters config (the adapters
    the only tensors left to their init), ``mmext-merge`` folds a trained
    LoRA checkpoint of the packaged LoRA config into a file that loads."""
    work = str(tmp_path)
    state = stock_segmentor(work)
    configs = os.path.join(venv_python(
        venv, 'import mmext_init.tools as t; print(t.example_configs())'
    ).strip(), 'mmseg')
    bin_dir = os.path.join(venv, 'bin')
    proc = run([os.path.join(bin_dir, 'mmext-match'),
                os.path.join(configs, 'segformer_mit_adapters_ft_tiny.py'),
                '--json', '-'], cwd=work)
    res = json.loads(proc.stdout)
    backbone = {k[len('backbone.'):] for k in state
                if k.startswith('backbone.')}
    assert res['module'] == 'backbone' and set(res['loaded']) == backbone
    assert res['missing'] and all(n.startswith('adapters.')
                                  for n in res['missing'])
    assert f"would load: {len(backbone)}\n" in proc.stderr

    lora_config = os.path.join(configs, 'segformer_mit_lora_tiny.py')
    monkeypatch.chdir(work)
    model, _ = cfp.build_initialized(Config.fromfile(lora_config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if '.lora_B.' in name:
                param.normal_(0, 0.05)
    trained = model.state_dict()
    torch.save({'state_dict': trained}, 'trained.pth')
    run([os.path.join(bin_dir, 'mmext-merge'), lora_config, 'trained.pth',
         '--out', 'merged.pth', '--json', 'merge.json'], cwd=work)
    with open(os.path.join(work, 'merge.json')) as f:
        data = json.load(f)
    assert data['proven'] and data['max_abs_difference'] <= data['atol']
    merged = torch.load(os.path.join(work, 'merged.pth'),
                        weights_only=True)['state_dict']
    assert set(merged) == {k for k in trained if '.lora_' not in k}
    assert len(data['meta']['folded']) == 11
    target = data['meta']['folded'][0] + '.weight'
    assert not torch.equal(merged[target], trained[target])  # LoRA folded
