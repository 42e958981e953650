"""Activation: import, reload, root registries under every scope,
custom_imports from a config, and the stock-behaviour context manager."""
import importlib
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import DictAction
from mmengine.model import BaseModule
from mmengine.registry import WEIGHT_INITIALIZERS, DefaultScope
from mmengine.runner.checkpoint import CheckpointLoader
from toy_models import TrunkWithAdapters

import mmext_init
from mmext_init import PretrainedInit, stock_mmengine
from mmext_init.deferred import deferred_construction, pending_count
from mmext_init.plugin.patches import original
from mmext_init.tools import (check_function_preserving, match_checkpoint,
                              merge_inserted)
from mmext_init.tools.cli import ATOL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_twice_and_reload_do_not_double_patch():
    from mmdet.models.backbones import SwinTransformer
    importlib.reload(mmext_init)
    importlib.reload(mmext_init)
    assert BaseModule.init_weights is mmext_init.InitWeightsMixin.init_weights
    stock = original(BaseModule, 'init_weights')
    assert stock.__module__ == 'mmengine.model.base_module'
    wrapped = SwinTransformer.__dict__['init_weights']
    inner = wrapped._mmext_wrapped_override
    assert not hasattr(inner, '_mmext_wrapped_override')
    assert WEIGHT_INITIALIZERS.get('Pretrained') is mmext_init.PretrainedInit


@pytest.mark.parametrize('scope', [None, 'mmengine', 'mmdet', 'mmseg'])
def test_pretrained_resolves_to_ours_under_every_scope(scope):
    importlib.import_module('mmdet.registry')
    importlib.import_module('mmseg.registry')
    name = f'test_scope_{scope}'
    if scope is None:
        built = WEIGHT_INITIALIZERS.build(dict(type='Pretrained',
                                               checkpoint='x.pth'))
    else:
        DefaultScope.get_instance(name, scope_name=scope)
        with DefaultScope.overwrite_default_scope(scope):
            built = WEIGHT_INITIALIZERS.build(
                dict(type='Pretrained', checkpoint='x.pth', min_loaded=0.5))
    assert isinstance(built, PretrainedInit)


def test_stock_context_restores_stock_then_plugin(save_ckpt):
    path = save_ckpt({'fc1.weight': torch.zeros(8, 8)})
    cfg = dict(type='Pretrained', checkpoint=path)
    torch.manual_seed(0)
    stock_model = TrunkWithAdapters(init_cfg=cfg)
    with stock_mmengine():
        assert WEIGHT_INITIALIZERS.get('Pretrained').__module__ == \
            'mmengine.model.weight_init'
        stock_model.init_weights()
    # before: stock never reaches the adapters in the plain ModuleList
    assert torch.count_nonzero(stock_model.adapters[0].up.weight) > 0
    plugin_model = TrunkWithAdapters(init_cfg=dict(cfg, on_missing='ignore'))
    plugin_model.init_weights()
    # after: the adapter's declared zero init is applied
    assert torch.count_nonzero(plugin_model.adapters[0].up.weight) == 0
    assert BaseModule.init_weights is mmext_init.InitWeightsMixin.init_weights


def _patched_in_subprocess(cfg_text, tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(cfg_text)
    code = ('from mmengine.config import Config\n'
            f'Config.fromfile({str(cfg)!r})\n'
            'from mmengine.model import BaseModule\n'
            "print(getattr(BaseModule.init_weights, '_mmext_contract', False))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_activation_through_custom_imports(tmp_path):
    on = "custom_imports = dict(imports=['mmext_init'], " \
         'allow_failed_imports=False)\n'
    assert _patched_in_subprocess(on, tmp_path) == 'True'
    assert _patched_in_subprocess('model = dict()\n', tmp_path) == 'False'


def test_init_weights_called_in_a_constructor_stays_a_plain_call():
    """mmcv's MultiScaleDeformableAttention calls init_weights in __init__;
    that must not start a session (no report, no ledger)."""
    from mmcv.ops import MultiScaleDeformableAttention
    msda = MultiScaleDeformableAttention(embed_dims=32, num_heads=2,
                                         num_levels=1, num_points=2)
    with pytest.raises(LookupError):
        mmext_init.get_provenance(msda)
    msda.init_weights()
    entry = mmext_init.get_provenance(msda).entries['sampling_offsets.bias']
    assert (entry.kind, entry.source) == ('init_weights',
                                          'MultiScaleDeformableAttention')


def test_uninstall_computes_what_is_pending_first():
    torch.manual_seed(0)
    with deferred_construction():
        fc = torch.nn.Linear(64, 64)
    assert pending_count() == 2
    torch.manual_seed(0)
    expected = torch.nn.Linear(64, 64).weight.detach().clone()
    torch.manual_seed(0)
    mmext_init.uninstall()
    try:
        assert pending_count() == 0
        assert type(fc.weight) is torch.nn.Parameter
        assert torch.equal(fc.weight.detach(), expected)
    finally:
        mmext_init.install()
    assert BaseModule.init_weights is mmext_init.InitWeightsMixin.init_weights


def test_a_scheme_registered_later_leaves_uninstall_complete():
    ours = CheckpointLoader._schemes['']
    CheckpointLoader.register_scheme('mmext-test://', lambda *a, **k: {})
    try:  # MMEngine rebuilt the table: the patch must follow it
        assert CheckpointLoader._schemes[''] is ours
        with stock_mmengine():
            stock = CheckpointLoader._schemes['']
            assert stock is not ours
            assert stock.__module__ == 'mmengine.runner.checkpoint'
        assert CheckpointLoader._schemes[''] is ours
    finally:
        CheckpointLoader._schemes.pop('mmext-test://')


TOOLS = {'mmext-match': match_checkpoint, 'mmext-merge': merge_inserted,
         'mmext-check': check_function_preserving}


@pytest.mark.parametrize('script', sorted(TOOLS))
def test_tools_share_their_conventions(script):
    """Every option has a help text; ``--cfg-options`` (mmengine's
    DictAction) and ``--json PATH`` everywhere, ``--atol`` with one
    default; the parser names the console script in its errors."""
    parser = TOOLS[script].build_parser()
    assert parser.prog == script
    actions = {a.dest: a for a in parser._actions if a.dest != 'help'}
    assert all(a.help for a in actions.values()), \
        [d for d, a in actions.items() if not a.help]
    assert isinstance(actions['cfg_options'], DictAction)
    assert (actions['json'].metavar, actions['json'].default) == \
        ('PATH', None)
    if 'atol' in actions:
        assert actions['atol'].default == ATOL == 1e-5


@pytest.mark.parametrize('script', sorted(TOOLS))
def test_tools_run_as_scripts_modules_and_wrappers(script, tmp_path):
    """The console script (installed with the package), ``python -m`` and
    the repository's ``tools/*.py`` wrapper run the same ``main``: one error
    line, exit status 2, for a config that does not exist."""
    module = TOOLS[script].__name__
    missing = str(tmp_path / 'missing.py')
    args = [missing, 'x.pth', '--out', str(tmp_path / 'o.pth')] \
        if script == 'mmext-merge' else [missing, '--reference', missing] \
        if script == 'mmext-check' else [missing]
    bin_dir = os.path.dirname(sys.executable)
    wrapper = os.path.join(REPO, 'tools', module.rsplit('.', 1)[1] + '.py')
    for command in ([os.path.join(bin_dir, script)],
                    [sys.executable, '-m', module],
                    [sys.executable, wrapper]):
        proc = subprocess.run(command + args, capture_output=True, text=True)
        assert (proc.returncode, proc.stderr) == (
            2, f'{script}: error: {missing}: no such config file\n'), command
