"""Issue 15: the SELECTOR grammar, layer depths on real backbones, tied
parameters counted once, and the selector/freeze errors."""
import pytest
import torch
import torch.nn as nn
from mmdet.models.backbones import SwinTransformer
from mmengine.model import BaseModule, Sequential
from mmseg.models.backbones import MixVisionTransformer

import mmext_init
from mmext_init import ProvenanceOptimWrapperConstructor
from mmext_init.errors import InitConfigError
from mmext_init.training.expected import param_table
from mmext_init.training.selectors import SelectorError, select

SGD = dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=0.01))


class Net(BaseModule):
    """A pretrained trunk (Linear + BatchNorm) and a new head."""

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        self.trunk = Sequential(
            nn.Linear(4, 4), nn.BatchNorm1d(4),
            init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
        self.head = nn.Linear(4, 2)


@pytest.fixture
def net(save_ckpt):
    trunk = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    return Net(save_ckpt(trunk.state_dict()))


def _names(selector, table):
    return [p.name for p in select(selector, table)]


def test_keywords_and_keys_before_and_after_init(net):
    before = param_table(net)
    assert not before.exact
    loaded = ['trunk.0.weight', 'trunk.0.bias', 'trunk.1.weight',
              'trunk.1.bias']
    assert _names('loaded', before) == loaded
    assert _names('new', before) == ['head.weight', 'head.bias']
    assert len(_names('all', before)) == 6
    assert _names(dict(module_type='_BatchNorm'), before) == loaded[2:]
    assert _names(dict(module_type='Net', name='bias$'), before) == \
        ['trunk.0.bias', 'trunk.1.bias', 'head.bias']
    assert _names([dict(name='^head'), dict(source=r'ckpt_1\.pth$')],
                  before) == loaded + ['head.weight', 'head.bias']
    assert _names(dict(declared_by='^trunk$'), before) == loaded
    with pytest.raises(SelectorError, match="only 'checkpoint' is known"):
        select(dict(provenance='initializer'), before)
    net.init_weights()
    after = param_table(net)
    assert after.exact
    assert _names(dict(provenance=['constructor']), after) == \
        ['head.weight', 'head.bias']
    assert _names(dict(provenance='checkpoint'), after) == loaded


def test_selector_matching_nothing_names_the_closest(net):
    table = param_table(net)
    with pytest.raises(SelectorError) as info:
        select(dict(name='^haed', provenance='checkpoint'), table,
               'paramwise_cfg.freeze')
    text = str(info.value)
    assert text.startswith('paramwise_cfg.freeze: selector')
    assert "name='^haed' matches none" in text and 'provenance' not in \
        text.split('matches no parameter:')[1]
    with pytest.raises(SelectorError, match="closest names: 'BatchNorm1d'"):
        select(dict(module_type='BatchNorm1D'), table)
    with pytest.raises(SelectorError, match="did you mean 'loaded'"):
        select('laoded', table)
    with pytest.raises(SelectorError, match="unknown key 'names'"):
        select(dict(names='x'), table)
    with pytest.raises(SelectorError, match='none matches all'):
        select(dict(name='^head', provenance='checkpoint'), table)


def test_freeze_and_rule_conflict_is_an_error(net):
    build = ProvenanceOptimWrapperConstructor(SGD, dict(
        freeze='loaded', rules=[dict(select=dict(name='bias$'),
                                     lr_mult=2.0)]))
    with pytest.raises(InitConfigError,
                       match=r'rules\[0\] gives lr_mult=2.0 .*trunk'):
        build(net)
    assert all(p.requires_grad for p in net.parameters())  # nothing done


class Tied(BaseModule):
    """One conv shared by two branches (as heads share convs across
    levels)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1)
        self.b = nn.Sequential(self.a, nn.Conv2d(2, 2, 1))


def test_tied_parameters_count_once():
    model = Tied()
    table = param_table(model)
    assert [p.names for p in table.params][:2] == [
        ('a.weight', 'b.0.weight'), ('a.bias', 'b.0.bias')]
    assert len(select(dict(name=r'^b\.0\.'), table)) == 2
    build = ProvenanceOptimWrapperConstructor(
        SGD, dict(norm_decay_mult=0.0,
                  rules=[dict(select=dict(name=r'^b\.1'), lr_mult=3)]))
    optimizer = build(model).optimizer  # stock would add a.weight twice
    params = [p for g in optimizer.param_groups for p in g['params']]
    assert len(params) == len({id(p) for p in params}) == 4
    lrs = sorted(round(g['lr'], 6) for g in optimizer.param_groups)
    assert lrs == [0.1, 0.3]


def _lr_by_name(model, optimizer):
    lr = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    return {n: lr[id(p)] for n, p in model.named_parameters()}


def _check_table(model, table, top, rate=0.5, base=0.1):
    """``table``: name prefix -> depth (every parameter under exactly one
    prefix); ``top`` the depth of 'the rest' (lr multiplier 1)."""
    build = ProvenanceOptimWrapperConstructor(
        SGD, dict(layer_decay=dict(rate=rate, select='all')))
    lrs = _lr_by_name(model, build(model).optimizer)
    for name, lr in lrs.items():
        prefixes = [k for k in table if name.startswith(k + '.')]
        assert len(prefixes) == 1, (name, prefixes)
        depth = table[prefixes[0]]
        assert lr == pytest.approx(base * rate**(top - depth)), name


def test_layer_decay_on_mmdet_swin():
    model = SwinTransformer(embed_dims=16, depths=(2, 2), num_heads=(1, 2),
                            strides=(4, 2), out_indices=(0, 1),
                            window_size=4, patch_size=4)
    _check_table(model, {
        'patch_embed': 0, 'stages.0.blocks.0': 1, 'stages.0.blocks.1': 2,
        'stages.0.downsample': 3, 'stages.1.blocks.0': 4,
        'stages.1.blocks.1': 5, 'norm0': 6, 'norm1': 6}, top=6)


def test_layer_decay_on_mmseg_mit():
    model = MixVisionTransformer(
        in_channels=3, embed_dims=8, num_stages=2, num_layers=[1, 2],
        num_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
        sr_ratios=[2, 1], out_indices=(0, 1))
    # stage parameters (patch embed, stage norm) before the stage's blocks
    _check_table(model, {
        'layers.0.0': 1, 'layers.0.2': 1, 'layers.0.1.0': 2,
        'layers.1.0': 3, 'layers.1.2': 3, 'layers.1.1.0': 4,
        'layers.1.1.1': 5}, top=6)


def test_layer_decay_over_a_part_only(net):
    build = ProvenanceOptimWrapperConstructor(
        SGD, dict(layer_decay=dict(rate=0.5, select='loaded')))
    lrs = _lr_by_name(net, build(net).optimizer)
    # one block-less module: all its parameters are the stem (depth 0 of 1)
    assert lrs['trunk.0.weight'] == pytest.approx(0.05)
    assert lrs['head.weight'] == pytest.approx(0.1)
