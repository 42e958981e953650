"""The contract (docs/guides/contract.md), line by line, on real MMEngine
modules."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.model import initialize
from toy_models import (Adapter, Model, SelfInit, Trunk, TrunkWithAdapters,
                        tiny_retinanet_cfg)

import mmext_init
from mmext_init import InitConfigError, get_provenance, stock_mmengine


def _trunk_ckpt(save_ckpt, prefix=''):
    trunk = Trunk()
    for p in trunk.parameters():
        nn.init.normal_(p)
    sd = {prefix + k: v.detach().clone() for k, v in trunk.state_dict().items()}
    return save_ckpt(sd), sd


def _assert_loaded(model, sd, prefix_model='', prefix_ckpt=''):
    state = model.state_dict()
    for key, value in sd.items():
        name = prefix_model + key[len(prefix_ckpt):]
        assert torch.equal(state[name], value), name


# 1. Loaded tensors are bit-identical, whatever the other init_cfgs say.
def test_loaded_tensors_are_bit_exact_despite_other_inits(save_ckpt):
    path, sd = _trunk_ckpt(save_ckpt)
    trunk = TrunkWithAdapters(init_cfg=[
        dict(type='Pretrained', checkpoint=path),
        dict(type='Constant', val=7, layer=['Linear', 'LayerNorm'])
    ])
    model = Model(trunk, init_cfg=dict(type='Normal', std=5, layer='Linear'))
    model.init_weights()
    _assert_loaded(trunk, sd)
    ledger = get_provenance(model)
    assert ledger.entries['backbone.fc1.weight'].kind == 'checkpoint'
    assert ledger.entries['backbone.fc1.weight'].key == 'fc1.weight'


# 2a. The nearest owning BaseModule's init (incl. override naming it) wins.
def test_owning_module_init_beats_init_missing_and_list_entries(save_ckpt):
    path, sd = _trunk_ckpt(save_ckpt)
    trunk = TrunkWithAdapters(init_cfg=[
        dict(type='Pretrained', checkpoint=path,
             init_missing=dict(type='Constant', val=5, layer='Linear')),
        dict(type='Constant', val=9, layer='Linear')
    ])
    trunk.init_weights()
    for adapter in [*trunk.adapters, trunk.seq[1], trunk.named['extra']]:
        assert torch.count_nonzero(adapter.up.weight) == 0  # override 'up'
        assert torch.count_nonzero(adapter.up.bias) == 0
        w = adapter.down.weight
        assert not torch.all(w == 5) and not torch.all(w == 9)  # Kaiming
    ledger = get_provenance(trunk)
    up = ledger.entries['adapters.2.up.weight']
    assert (up.kind, up.source, up.declared_by) == (
        'initializer', 'Constant', 'adapters.2')
    assert ledger.entries['adapters.2.down.weight'].source == 'Kaiming'
    # 2b. init_missing beats the same list's other entries
    assert torch.all(trunk.plain.weight == 5)
    assert ledger.entries['plain.weight'].notes == (
        'init_missing of Pretrained', )
    _assert_loaded(trunk, sd)


def test_owning_module_init_weights_override_counts_as_declared(save_ckpt):
    path, _ = _trunk_ckpt(save_ckpt)
    trunk = Trunk(init_cfg=dict(type='Pretrained', checkpoint=path))
    trunk.extra = nn.ModuleList([SelfInit()])
    trunk.init_weights()
    fc = trunk.extra[0].fc
    assert torch.all(fc.weight == 3) and torch.all(fc.bias == -1)
    entry = get_provenance(trunk).entries['extra.0.fc.bias']
    assert (entry.kind, entry.source) == ('init_weights', 'SelfInit')


# 2c. Non-Pretrained entries of the same list when nothing more specific.
def test_same_list_entries_apply_to_missing_only(save_ckpt):
    path, sd = _trunk_ckpt(save_ckpt)
    trunk = Trunk(init_cfg=[
        dict(type='Pretrained', checkpoint=path),
        dict(type='Constant', val=4, layer='Linear')
    ])
    trunk.extra = nn.Linear(8, 8)
    trunk.init_weights()
    assert torch.all(trunk.extra.weight == 4)
    _assert_loaded(trunk, sd)


# 2d. Nothing declared: constructor default, reported; on_missing decides.
@pytest.mark.parametrize('policy', ['warn', 'error', 'ignore'])
def test_no_declared_init_follows_on_missing(save_ckpt, policy, caplog):
    path, _ = _trunk_ckpt(save_ckpt)
    trunk = Trunk(init_cfg=dict(type='Pretrained', checkpoint=path,
                                on_missing=policy))
    trunk.extra = nn.Linear(8, 8)
    before = trunk.extra.weight.detach().clone()
    if policy == 'error':
        with pytest.raises(InitConfigError, match=r'extra\.\{weight,bias\}'):
            trunk.init_weights()
        return
    trunk.init_weights()
    assert torch.equal(trunk.extra.weight, before)
    ledger = get_provenance(trunk)
    assert ledger.names('constructor') == ['extra.weight', 'extra.bias']
    assert mmext_init.format_report(ledger).count(
        'no declared init (constructor default):') == 1


# 3. Wherever Pretrained appears: model, backbone, submodule with prefix.
def test_pretrained_at_model_level_with_prefix(save_ckpt):
    path, sd = _trunk_ckpt(save_ckpt, prefix='backbone.')
    model = Model(TrunkWithAdapters(),
                  init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    _assert_loaded(model, sd)
    assert torch.count_nonzero(model.backbone.adapters[3].up.weight) == 0
    trunk = TrunkWithAdapters(init_cfg=dict(
        type='Pretrained', checkpoint=path, prefix='backbone.'))
    Model(trunk).init_weights()
    _assert_loaded(trunk, sd, prefix_ckpt='backbone.')


def test_pretrained_on_a_submodule_inside_a_plain_container(save_ckpt):
    adapter = Adapter()
    for p in adapter.parameters():
        nn.init.normal_(p)
    path = save_ckpt({k: v.clone() for k, v in adapter.state_dict().items()})
    trunk = TrunkWithAdapters()
    trunk.adapters[1].init_cfg = dict(type='Pretrained', checkpoint=path)
    trunk.init_weights()
    assert torch.equal(trunk.adapters[1].up.weight, adapter.up.weight)
    assert torch.count_nonzero(trunk.adapters[0].up.weight) == 0


def test_outer_pretrained_wins_over_inner_like_stock(save_ckpt):
    inner_path, _ = _trunk_ckpt(save_ckpt)
    outer_path, outer_sd = _trunk_ckpt(save_ckpt, prefix='backbone.')
    trunk = Trunk(init_cfg=dict(type='Pretrained', checkpoint=inner_path))
    model = Model(trunk, init_cfg=dict(type='Pretrained',
                                       checkpoint=outer_path))
    model.init_weights()
    _assert_loaded(model, outer_sd)
    assert get_provenance(model).entries['backbone.fc1.weight'].source == \
        outer_path


# 4. No initializer work on values the checkpoint overwrites.
def test_no_random_draws_for_loaded_tensors(save_ckpt):
    path, _ = _trunk_ckpt(save_ckpt)
    trunk = Trunk(init_cfg=[
        dict(type='Pretrained', checkpoint=path),
        dict(type='Normal', std=1, layer='Linear')
    ])
    trunk.extra = nn.Linear(8, 8)
    torch.manual_seed(1)
    trunk.init_weights()
    after_plugin = torch.get_rng_state()
    only_extra = nn.Linear(8, 8)
    torch.manual_seed(1)
    initialize(only_extra, dict(type='Normal', std=1, layer='Linear'))
    assert torch.equal(trunk.extra.weight, only_extra.weight)
    assert torch.equal(after_plugin, torch.get_rng_state())


# 5. Without Pretrained and with stock-reachable modules: same as stock.
def _resnet_detector():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = tiny_retinanet_cfg(zero_init_residual=True)
    return MODELS.build(cfg)


def test_same_values_as_stock_without_pretrained():
    torch.manual_seed(3)
    ours = _resnet_detector()
    stock = copy.deepcopy(ours)
    torch.manual_seed(5)
    ours.init_weights()
    torch.manual_seed(5)
    with stock_mmengine():
        stock.init_weights()
    for (name, a), b in zip(ours.state_dict().items(),
                            stock.state_dict().values()):
        assert torch.equal(a, b), name
    kinds = get_provenance(ours).counts()
    assert kinds['initializer'] > 0 and kinds['checkpoint'] == 0


# 6. Dotted override paths, layer typos, silent real class names.
def test_override_accepts_dotted_paths_and_deeper_declarations_win():
    trunk = TrunkWithAdapters(init_cfg=dict(
        type='Constant', val=1, layer='LayerNorm',
        override=[dict(type='Constant', val=2, name='seq.1.down'),
                  dict(type='Constant', val=3, name='fc2')]))
    trunk.extra = nn.Sequential(nn.Identity(), nn.Linear(8, 8))
    trunk.init_cfg['override'].append(
        dict(type='Constant', val=4, name='extra.1'))
    trunk.init_weights()
    assert torch.all(trunk.extra[1].weight == 4)
    assert torch.all(trunk.fc2.weight == 3)
    ledger = get_provenance(trunk)
    assert ledger.entries['extra.1.weight'].declared_by == ''
    # the adapter's own init_cfg is more specific than its parent's override
    assert not torch.all(trunk.seq[1].down.weight == 2)
    assert ledger.entries['seq.1.down.weight'].declared_by == 'seq.1'


def test_override_path_typo_suggests_close_name():
    trunk = TrunkWithAdapters(init_cfg=dict(
        type='Constant', val=2, override=dict(name='adapters.1.dwn')))
    with pytest.raises(InitConfigError, match=r"did you mean 'adapters.1.down'"):
        trunk.init_weights()


def test_layer_typo_is_an_error_with_suggestion():
    trunk = Trunk(init_cfg=dict(type='Kaiming', layer='Linaer'))
    with pytest.raises(InitConfigError,
                       match=r"layer 'Linaer' .*did you mean 'Linear'"):
        trunk.init_weights()


def test_real_class_name_matching_nothing_is_silent():
    trunk = Trunk(init_cfg=dict(type='Kaiming', layer='Conv3d'))
    trunk.init_weights()
    assert get_provenance(trunk).counts()['initializer'] == 0


def test_init_weights_twice_warns_and_keeps_values(caplog):
    trunk = TrunkWithAdapters(init_cfg=dict(type='Normal', layer='Linear'))
    trunk.init_weights()
    before = copy.deepcopy(trunk.state_dict())
    trunk.init_weights()
    for k, v in trunk.state_dict().items():
        assert torch.equal(v, before[k])


def test_explicit_mixin_on_plain_module():
    class Plain(mmext_init.InitWeightsMixin, nn.Module):

        def __init__(self):
            super().__init__()
            self.init_cfg = dict(type='Constant', val=0.5, layer='Linear')
            self.fc = nn.Linear(3, 3)

    m = Plain()
    m.init_weights()
    assert torch.all(m.fc.weight == 0.5)
    assert get_provenance(m).entries['fc.weight'].source == 'Constant'


def test_initialize_with_pretrained_called_directly(save_ckpt):
    path, sd = _trunk_ckpt(save_ckpt)
    trunk = Trunk()
    trunk.extra = nn.Linear(8, 8)
    initialize(trunk, dict(type='Pretrained', checkpoint=path,
                           init_missing=dict(type='Constant', val=1,
                                             layer='Linear')))
    _assert_loaded(trunk, sd)
    assert torch.all(trunk.extra.weight == 1)
    # the plugin's session ran (stock MMEngine has no ledger and no
    # init_missing): every tensor recorded, from the file or the entry
    entries = get_provenance(trunk).entries
    assert set(entries) == set(trunk.state_dict())
    for key in sd:
        assert (entries[key].kind, entries[key].source) == ('checkpoint',
                                                            path), key
    assert (entries['extra.weight'].kind, entries['extra.weight'].source) == (
        'initializer', 'Constant')
