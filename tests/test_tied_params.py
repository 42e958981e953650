"""Tied parameters (one tensor under several names) in the ledger: every
name says where the shared value came from (mmdet's
``RetinaSepBNHead`` shares its convs across pyramid levels)."""
import torch
from mmengine.model import BaseModule
from mmengine.registry import MODELS, init_default_scope

from mmext_init import get_provenance


def _sepbn_head(**kwargs):
    init_default_scope('mmdet')
    return MODELS.build(dict(
        type='RetinaSepBNHead', num_classes=3, num_ins=3, in_channels=8,
        feat_channels=8, stacked_convs=2, norm_cfg=dict(type='BN'),
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                              scales_per_octave=1, ratios=[1.0],
                              strides=[8, 16, 32]), **kwargs))


def test_tied_convs_get_the_provenance_of_their_value():
    """Regression: levels 1 and 2 were 'constructor default (no declared
    init)' although they are level 0's conv, written by the head's own
    ``init_weights`` (normal_init)."""
    head = _sepbn_head()
    assert head.cls_convs[2][1].conv is head.cls_convs[0][1].conv
    head.init_weights()
    ledger = get_provenance(head)
    for level in (1, 2):
        for branch in ('cls_convs', 'reg_convs'):
            name = f'{branch}.{level}.1.conv.weight'
            owner = f'{branch}.0.1.conv.weight'
            prov, first = ledger.entries[name], ledger.entries[owner]
            assert prov.kind == first.kind == 'init_weights'
            assert prov.source == first.source == 'RetinaSepBNHead'
            assert prov.notes == first.notes + (f'tied to {owner}', )
    tied = [n for n in ledger.entries if n.split('.')[1] in ('1', '2')
            and '.conv.' in n]
    assert tied and all(ledger.entries[n].kind != 'constructor' for n in tied)


def test_tied_convs_loaded_from_a_checkpoint(save_ckpt):
    """Loaded: every name of the shared conv says checkpoint, with the value
    of the file."""
    source = _sepbn_head()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = save_ckpt({k: v.detach().clone()
                      for k, v in source.state_dict().items()})
    # the head refuses an init_cfg of its own: Pretrained on a parent
    model = BaseModule(init_cfg=dict(type='Pretrained', checkpoint=path,
                                     revise_keys=[(r'^', 'head.')]))
    model.head = _sepbn_head()
    model.init_weights()
    ledger = get_provenance(model)
    name = 'head.reg_convs.2.0.conv.weight'
    assert ledger.entries[name].kind == 'checkpoint'
    assert ledger.entries[name].notes[-1] == \
        'tied to head.reg_convs.0.0.conv.weight'
    assert torch.equal(model.head.state_dict()[name[5:]],
                       source.state_dict()[name[5:]])


class ReplacesData(BaseModule):
    """Two layers whose ``init_weights`` replaces a bias's storage, as
    mmcv's ``MultiScaleDeformableAttention`` does (``bias.data = ...``):
    the second layer's new storage is where the first's was."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)

    def init_weights(self):
        old = self.a.bias.data
        self.a.bias.data = torch.full((4, ), 2.0)
        self.b.bias.data = old.fill_(3.0)


class HoldsReplacing(BaseModule):
    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.layers = ReplacesData()


def test_a_replaced_storage_is_not_taken_for_a_tie(save_ckpt):
    model = HoldsReplacing()
    model.init_weights()
    ledger = get_provenance(model)
    for name in ('layers.a.bias', 'layers.b.bias'):
        assert not any('tied' in n for n in ledger.entries[name].notes), name
    assert torch.equal(model.layers.b.bias, torch.full((4, ), 3.0))
    path = save_ckpt({k: torch.randn(v.shape)
                      for k, v in HoldsReplacing().state_dict().items()})
    loaded = HoldsReplacing(init_cfg=dict(type='Pretrained',
                                          checkpoint=path))
    loaded.init_weights()
    ledger = get_provenance(loaded)
    file = torch.load(path, weights_only=True)
    file = file.get('state_dict', file)
    for name, entry in ledger.entries.items():
        assert (entry.kind, entry.key) == ('checkpoint', name), name
        assert torch.equal(loaded.state_dict()[name], file[name]), name
