"""CopyFrom: a new branch starts as a copy of a pretrained one."""
import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModule
from toy_models import Trunk

from mmext_init import InitConfigError, copy_from, get_provenance


class TwoBranch(BaseModule):
    """A pretrained trunk plus a new branch of the same structure."""

    def __init__(self, init_cfg=None, branch_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.trunk = Trunk()
        self.branch = Trunk(init_cfg=branch_cfg)


def _ckpt(save_ckpt):
    trunk = Trunk()
    for p in trunk.parameters():
        nn.init.normal_(p)
    sd = {'trunk.' + k: v.detach().clone() for k, v in
          trunk.state_dict().items()}
    return save_ckpt(sd), sd


def test_copy_of_a_pretrained_block_is_bit_exact(save_ckpt):
    path, sd = _ckpt(save_ckpt)
    model = TwoBranch(init_cfg=[
        dict(type='Pretrained', checkpoint=path, on_missing='ignore'),
        dict(type='Constant', val=0, layer='Linear',
             override=dict(type='CopyFrom', name='branch', source='trunk'))])
    model.init_weights()  # the copy is declared before the load happens
    for name, value in model.branch.state_dict().items():
        assert torch.equal(value, sd['trunk.' + name]), name
    entry = get_provenance(model).entries['branch.fc1.weight']
    assert (entry.source, entry.key, entry.declared_by) == (
        'CopyFrom', 'trunk.fc1.weight', '')


def test_deeper_declaration_still_wins_over_copy(save_ckpt):
    path, _ = _ckpt(save_ckpt)
    model = TwoBranch(
        init_cfg=[dict(type='Pretrained', checkpoint=path),
                  dict(type='Constant', val=0, layer='Conv3d',
                       override=dict(type='CopyFrom', name='branch',
                                     source='trunk'))],
        branch_cfg=dict(type='Constant', val=5, layer='Linear'))
    model.init_weights()
    assert torch.all(model.branch.fc1.weight == 5)
    assert torch.equal(model.branch.norm.weight, model.trunk.norm.weight)


def test_source_typo_and_shape_mismatch_are_clear_errors(save_ckpt):
    path, _ = _ckpt(save_ckpt)
    model = TwoBranch(init_cfg=[
        dict(type='Pretrained', checkpoint=path),
        dict(type='Constant', val=0, layer='Linear',
             override=dict(type='CopyFrom', name='branch', source='trnk'))])
    with pytest.raises(InitConfigError, match="did you mean 'trunk'"):
        model.init_weights()
    with pytest.raises(InitConfigError, match=r'fc1.weight has shape '
                       r'\(4, 4\) but source .* has \(8, 8\)'):
        copy_from(Trunk(4), Trunk(8))


def test_copy_from_checkpoint_subtree(save_ckpt):
    path, sd = _ckpt(save_ckpt)
    trunk = Trunk(init_cfg=dict(type='CopyFrom', checkpoint=path,
                                prefix='trunk'))
    trunk.init_weights()
    assert torch.equal(trunk.fc2.bias, sd['trunk.fc2.bias'])
    assert get_provenance(trunk).entries['fc2.bias'].source == 'CopyFrom'
