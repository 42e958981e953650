"""Declared inits are never silently void: the new types without ``layer``
and ``override`` apply to the module declaring them, any entry that touched
no tensor is named in the report and the ledger, and messages name the
model root and ``init_missing`` entries properly."""
import copy
import re

import pytest
import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.model import BaseModule
from toy_models import Trunk, tiny_retinanet_cfg

from mmext_init import InitConfigError, format_report, get_provenance
from mmext_init.provenance.report import VOID_TITLE


class LoRALinear(BaseModule):
    """A frozen base projection plus a low-rank update ``lora_B @ lora_A``."""

    def __init__(self, dim: int = 8, rank: int = 2, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.base = nn.Linear(dim, dim)
        self.lora_A = nn.Linear(dim, rank, bias=False)
        self.lora_B = nn.Linear(rank, dim, bias=False)


class Block(BaseModule):
    """A block whose children are LoRA modules."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.attn = LoRALinear()
        self.mlp = LoRALinear()


class Adapter(BaseModule):
    """Two square projections and a norm."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.down = nn.Linear(8, 8)
        self.up = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)


class Act(BaseModule):
    """A BaseModule holding nothing an initializer could write."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.relu = nn.ReLU()


class Holder(BaseModule):
    """A root holding one child under the name ``child``."""

    def __init__(self, child: nn.Module, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.trunk = Trunk()
        self.child = child


def _retinanet(**cfg_changes) -> nn.Module:
    register_all_modules()
    cfg = tiny_retinanet_cfg()
    for key, value in cfg_changes.items():
        target = cfg
        *parents, last = key.split('.')
        for part in parents:
            target = target[part]
        target[last] = value
    return MODELS.build(cfg)


# 1. The new types without layer/override: the module that declares them.
def test_lora_on_the_module_holding_the_projections():
    lora = LoRALinear(init_cfg=dict(type='LoRAPair'))
    before = lora.lora_A.weight.clone()
    lora.init_weights()
    assert torch.count_nonzero(lora.lora_B.weight) == 0
    assert not torch.equal(lora.lora_A.weight, before)  # drawn again
    entries = get_provenance(lora).entries
    assert entries['lora_A.weight'].source == 'LoRAPair'
    assert entries['lora_B.weight'].source == 'LoRAPair'
    assert entries['base.weight'].kind == 'constructor'
    assert get_provenance(lora).void_entries == []


def test_lora_on_a_block_whose_children_are_lora_modules():
    block = Block(init_cfg=dict(type='LoRAPair', mode='gaussian'))
    block.init_weights()
    for lora in (block.attn, block.mlp):
        assert torch.count_nonzero(lora.lora_B.weight) == 0
    entry = get_provenance(block).entries['mlp.lora_A.weight']
    assert (entry.source, entry.args, entry.declared_by) == (
        'LoRAPair', {'mode': 'gaussian'}, '')


@pytest.mark.parametrize('init_type', ['Zero', 'Identity', 'Orthogonal'])
def test_bare_entry_equals_an_override_naming_the_module(init_type):
    """``dict(type=T)`` on a module == ``override`` naming it from above."""
    torch.manual_seed(1)
    bare = Holder(Adapter(init_cfg=dict(type=init_type)))
    torch.manual_seed(1)
    named = Holder(Adapter(), init_cfg=dict(
        type=init_type, override=dict(name='child')))
    reference = copy.deepcopy(bare.child.state_dict())
    torch.manual_seed(2)
    bare.init_weights()
    torch.manual_seed(2)
    named.init_weights()
    changed = [k for k, v in bare.child.state_dict().items()
               if not torch.equal(v, reference[k])]
    assert changed, f'{init_type} without layer initialized nothing'
    for key, value in bare.child.state_dict().items():
        assert torch.equal(value, named.child.state_dict()[key]), key
    assert get_provenance(bare).entries['child.up.weight'].source == \
        init_type


@pytest.mark.parametrize('init_type', ['Zero', 'Identity', 'Orthogonal',
                                       'LoRAPair'])
def test_bare_entry_on_a_module_with_nothing_to_initialize(init_type):
    model = Holder(Act(init_cfg=dict(type=init_type)))
    with pytest.raises(InitConfigError, match=(
            rf"^init_cfg of 'child' \({init_type}\): {init_type}: .*Act\(\)"
            r'.*without layer= and override= applies to the module that '
            r'declares it')):
        model.init_weights()


def test_bare_copy_from_into_a_module_without_tensors_is_an_error():
    model = Holder(Act(init_cfg=dict(type='CopyFrom', source='trunk')))
    with pytest.raises(InitConfigError, match=(
            r"^init_cfg of 'child' \(CopyFrom\): CopyFrom into 'child': Act "
            'has no parameters or buffers')):
        model.init_weights()


def test_copy_from_with_override_leaves_the_declaring_module_alone():
    """As for every type: with ``override`` and no ``layer``, only the
    named module gets the init (the root's own tensors do not line up)."""
    model = Holder(Trunk(), init_cfg=dict(
        type='CopyFrom', source='trunk', override=dict(name='child')))
    model.init_weights()
    for key, value in model.child.state_dict().items():
        assert torch.equal(value, model.trunk.state_dict()[key]), key


# 2. Entries that touched no tensor are named; skipped ones are not void.
def test_void_stock_entries_are_reported_not_errors():
    model = _retinanet(**{'neck.init_cfg': dict(type='Kaiming',
                                                layer='Conv3d'),
                          'init_cfg': dict(type='Normal', std=0.01)})
    model.init_weights()  # stock types: never an error
    ledger = get_provenance(model)
    assert [(v.module, v.entry, v.field) for v in ledger.void_entries] == [
        ('', 'Normal', 'init_cfg'), ('neck', "Kaiming, layer='Conv3d'",
                                     'init_cfg')]
    text = format_report(ledger)
    assert text.index(VOID_TITLE) > text.index('no declared init')
    assert ("  init_cfg of the model root (RetinaNet) (Normal): it has "
            'neither layer= nor override=') in text
    assert ("  init_cfg of 'neck' (Kaiming, layer='Conv3d'): no Conv3d "
            'layer in it') in text
    data = ledger.to_dict()['void_entries']
    assert data[1] == dict(module='neck', entry="Kaiming, layer='Conv3d'",
                           reason='no Conv3d layer in it', field='init_cfg',
                           checkpoint=None)


def test_entries_whose_targets_the_checkpoint_provides_are_not_void(
        save_ckpt):
    trunk = Trunk()
    path = save_ckpt({k: v.detach().clone()
                      for k, v in trunk.state_dict().items()})
    model = Trunk(init_cfg=[
        dict(type='Pretrained', checkpoint=path,
             init_missing=dict(type='Kaiming', layer='Linear')),
        dict(type='Normal', layer='Linear'),
        dict(type='Orthogonal', layer='Linear'),
        dict(type='Constant', val=1, layer='ReLU')])
    model.init_weights()
    ledger = get_provenance(model)
    assert ledger.counts()['checkpoint'] == len(trunk.state_dict())
    assert [(v.entry, v.reason) for v in ledger.void_entries] == [
        ("Constant, layer='ReLU'", 'no ReLU layer in it')]


def test_void_entries_are_folded_per_module_in_the_report():
    model = Holder(nn.ModuleList(
        [Adapter(init_cfg=dict(type='Xavier', layer='Conv2d'))
         for _ in range(3)]))
    model.init_weights()
    text = format_report(get_provenance(model))
    assert ("  init_cfg of 'child.{0..2}' (Xavier, layer='Conv2d'): no "
            'Conv2d layer in it') in text


# 3. The model root is named, never ''.
def test_messages_and_report_name_the_model_root(save_ckpt):
    model = _retinanet(init_cfg=dict(type='Kaiming', layer='Conv2D'))
    with pytest.raises(InitConfigError, match=re.escape(
            "init_cfg of the model root (RetinaNet) (Kaiming): layer "
            "'Conv2D' is not")):
        model.init_weights()
    path = save_ckpt({k: v.detach().clone()
                      for k, v in _retinanet().state_dict().items()})
    model = _retinanet(init_cfg=[
        dict(type='Pretrained', checkpoint=path),
        dict(type='Constant', val=0, layer='Conv3d')])
    model.init_weights()
    text = format_report(get_provenance(model))
    assert f'load the model root (RetinaNet) <- {path} ' in text
    assert "''" not in text and '<root>' not in text
    assert ("init_cfg of the model root (RetinaNet) (Constant, "
            "layer='Conv3d'): no Conv3d layer in it") in text


def test_initializer_lines_name_the_model_root():
    model = Trunk(init_cfg=dict(type='Constant', val=2, layer='Linear'))
    model.init_weights()
    assert ('fc{1..2}.{weight,bias} <- Constant(val=2) from the model root '
            '(Trunk)') in format_report(get_provenance(model))


def test_copy_from_names_the_model_root():
    model = Trunk(init_cfg=dict(type='CopyFrom', source='fc1'))
    with pytest.raises(InitConfigError,
                       match=re.escape('CopyFrom into the model root (Trunk)'
                                       ': tensor names do not line up')):
        model.init_weights()


# 4. init_missing entries are named as such, with their Pretrained entry.
def test_init_missing_typo_names_init_missing_and_its_pretrained(save_ckpt):
    backbone = _retinanet().backbone
    path = save_ckpt({'backbone.' + k: v.detach().clone()
                      for k, v in backbone.state_dict().items()})
    model = _retinanet(**{'backbone.init_cfg': dict(
        type='Pretrained', checkpoint=path, prefix='backbone.',
        init_missing=dict(type='Kaiming', layer='Conv2D'))})
    with pytest.raises(InitConfigError, match=re.escape(
            "init_missing of 'backbone' (Kaiming), in init_cfg of "
            f"'backbone' (Pretrained) for {path}: layer 'Conv2D' is not")):
        model.init_weights()


def test_void_init_missing_entry_is_reported(save_ckpt):
    backbone = _retinanet().backbone
    path = save_ckpt({'backbone.' + k: v.detach().clone()
                      for k, v in backbone.state_dict().items()})
    model = _retinanet(**{'backbone.init_cfg': dict(
        type='Pretrained', checkpoint=path, prefix='backbone.',
        init_missing=dict(type='Kaiming', layer='Conv3d'))})
    model.init_weights()
    ledger = get_provenance(model)
    assert [(v.module, v.field, v.checkpoint) for v in ledger.void_entries] \
        == [('backbone', 'init_missing', path)]
    assert ("  init_missing of 'backbone' (Kaiming, layer='Conv3d'), in "
            f"init_cfg of 'backbone' (Pretrained) for {path}: no Conv3d "
            'layer in it') in format_report(ledger)


def test_invalid_override_stock_never_runs_is_void_not_an_error():
    """Regression (zoo sweep, tridentnet): mmdet's ``TridentConv`` declares
    ``override=dict(name='conv2')``, which names no submodule of it; it sits
    in a plain ``nn.Sequential``, so stock never runs that entry. mmext_init
    initializes such modules and raised an error, breaking a stock config:
    the entry is now listed as void, with the reason."""
    from mmengine.registry import MODELS, init_default_scope
    from mmext_init import get_provenance
    init_default_scope('mmdet')
    backbone = MODELS.build(dict(
        type='TridentResNet', depth=50, num_stages=3, num_branch=3,
        test_branch_idx=1,
        strides=(1, 2, 2), dilations=(1, 1, 1), trident_dilations=(1, 2, 3),
        out_indices=(2, ), init_cfg=None))
    backbone.init_weights()
    void = [v for v in get_provenance(backbone).void_entries
            if 'conv2' in v.reason]
    assert void and all(v.module.endswith('.conv2') for v in void)
    assert "override name 'conv2' is not a submodule of TridentConv" in \
        void[0].reason


def test_invalid_override_stock_runs_is_still_an_error():
    """Where stock runs the entry (and fails too), it stays an error."""
    from mmengine.model import BaseModule
    from mmext_init import InitConfigError

    class Block(BaseModule):
        def __init__(self):
            super().__init__(init_cfg=dict(type='Kaiming',
                                           override=dict(name='conv9')))
            self.conv = torch.nn.Conv2d(2, 2, 1)

    with pytest.raises(InitConfigError, match="override name 'conv9'"):
        Block().init_weights()
