"""An enclosing ``Pretrained`` entry supersedes its children's: mmpretrain's
``CSPNet`` hands its own ``init_cfg`` to every ``CSPStage``, so a
backbone-level ``Pretrained(prefix='backbone.')`` is also on each stage,
where it matches nothing. Stock MMEngine loads nothing there (a warning) and
the backbone's entry, applied after its children's, loads everything. With
the plugin the same values, the stage entries listed as initializing
nothing, and the optimizer constructor predicts the same; an entry that an
enclosing one does not cover in full still fails."""
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS

import mmext_init
from mmext_init.errors import CheckpointError
from mmext_init.training.expected import param_table

CONFIG = os.path.join(os.path.dirname(__import__('mmpretrain').__file__),
                      '.mim', 'configs', 'cspnet',
                      'cspresnet50_8xb32_in1k.py')


def model_cfg(checkpoint: str) -> dict:
    """The shipped config's model, its backbone ``Pretrained``."""
    cfg = Config.fromfile(CONFIG).model
    cfg.backbone.init_cfg = dict(type='Pretrained', checkpoint=checkpoint,
                                 prefix='backbone.')
    return cfg


def build(cfg: dict) -> torch.nn.Module:
    init_default_scope('mmpretrain')
    return MODELS.build(cfg)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> str:
    """A stock classifier's state dict (random, seeded)."""
    torch.manual_seed(3)
    with mmext_init.stock_mmengine():
        model = build(Config.fromfile(CONFIG).model)
        model.init_weights()
    path = str(tmp_path_factory.mktemp('csp') / 'cspresnet50.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def test_stage_entries_are_superseded_and_values_are_stock(checkpoint):
    torch.manual_seed(0)
    with mmext_init.stock_mmengine():
        stock = build(model_cfg(checkpoint))
        stock.init_weights()
    torch.manual_seed(0)
    model = build(model_cfg(checkpoint))
    model.init_weights()
    ours, theirs = model.state_dict(), stock.state_dict()
    assert list(ours) == list(theirs)
    backbone = [n for n in ours if n.startswith('backbone.')]
    for name in backbone:  # the head's draws differ: deferral drew less
        assert torch.equal(ours[name], theirs[name]), name
    ledger = mmext_init.get_provenance(model)
    assert ledger.entries['head.fc.weight'].source == 'Normal'
    void = {v.module: v.reason for v in ledger.void_entries}
    assert sorted(void) == [f'backbone.stages.{i}' for i in range(4)]
    assert all(r.startswith("the same entry as that of 'backbone'")
               for r in void.values())
    assert all(ledger.entries[n].source == checkpoint for n in backbone)
    assert [r.module for r in ledger.loads] == ['backbone']


def test_the_prediction_matches_the_ledger(checkpoint):
    model = build(model_cfg(checkpoint))
    predicted = {i.name for i in param_table(model).params if i.loaded}
    model.init_weights()
    exact = {i.name for i in param_table(model).params if i.loaded}
    assert predicted == exact
    assert predicted == {n for n, _ in model.named_parameters()
                         if n.startswith('backbone.')}


def partial_checkpoint(checkpoint: str, folder) -> tuple:
    """``checkpoint`` without one tensor of stage 1."""
    state = torch.load(checkpoint, weights_only=True)['state_dict']
    dropped = next(k for k in state if k.startswith('backbone.stages.1.')
                   and k.endswith('.weight'))
    del state[dropped]
    path = str(folder / 'partial.pth')
    torch.save({'state_dict': state}, path)
    return path, dropped


def test_the_same_entry_is_superseded_even_when_not_covered(checkpoint,
                                                            tmp_path):
    partial, dropped = partial_checkpoint(checkpoint, tmp_path)
    with mmext_init.stock_mmengine():
        stock = build(model_cfg(partial))
        stock.init_weights()
    model = build(model_cfg(partial))
    model.init_weights()
    ledger = mmext_init.get_provenance(model)
    assert {v.module for v in ledger.void_entries} == {
        f'backbone.stages.{i}' for i in range(4)}
    assert any('the same entry as that of' in v.reason
               for v in ledger.void_entries)
    assert ledger.loads[-1].missing == [dropped]
    assert ledger.entries[dropped].kind != 'checkpoint'
    ours, theirs = model.state_dict(), stock.state_dict()
    for name in ours:
        if name.startswith('backbone.') and name != dropped:
            assert torch.equal(ours[name], theirs[name]), name


def test_another_entry_not_covered_in_full_still_fails(checkpoint,
                                                       tmp_path):
    partial, _ = partial_checkpoint(checkpoint, tmp_path)
    cfg = model_cfg(partial)
    model = build(cfg)
    model.backbone.stages[1].init_cfg = dict(
        type='Pretrained', checkpoint=partial, prefix='neck.')
    with pytest.raises(CheckpointError, match=r"'backbone\.stages\.1'.*"
                       'nothing in .* matches the module'):
        model.init_weights()
