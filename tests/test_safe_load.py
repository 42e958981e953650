"""Safe checkpoint reading, key options and their errors (damaged files:
``test_fuzz_checkpoints.py``)."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.runner import load_checkpoint
from toy_models import Model, Trunk

from mmext_init import CheckpointError, InitConfigError, get_provenance
from mmext_init.checkpoint.safe_load import read_checkpoint
from mmext_init.loading.plan import all_finite


class Evil:
    """A pickle payload: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


class Note:
    """A benign custom class: needs trust_checkpoint to be rebuilt."""

    def __init__(self, text='hi'):
        self.text = text


def _trunk_sd():
    trunk = Trunk()
    for p in trunk.parameters():
        nn.init.normal_(p)
    return {k: v.detach().clone() for k, v in trunk.state_dict().items()}


def _model(path, **kwargs):
    trunk = Trunk(init_cfg=dict(type='Pretrained', checkpoint=path, **kwargs))
    return Model(trunk), trunk


def test_runner_checkpoint_loads_where_stock_torch_load_refuses(runner_ckpt):
    with pytest.raises(Exception, match='[Ww]eights only load failed'):
        torch.load(runner_ckpt)
    ckpt, skipped = read_checkpoint(runner_ckpt)
    assert skipped == []
    assert 'message_hub' in ckpt and 'optimizer' in ckpt
    sd = ckpt['state_dict']
    model, trunk = _model(runner_ckpt, prefix='backbone.')
    model.init_weights()
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, sd['backbone.' + key]), key
    # MMEngine's own loader (load_from, init_detector, test scripts) too
    fresh = Trunk()
    load_checkpoint(fresh, runner_ckpt, revise_keys=[(r'^backbone\.', '')])
    assert torch.equal(fresh.fc1.weight, sd['backbone.fc1.weight'])


def test_malicious_pickle_does_not_run_and_tensors_load(save_ckpt, tmp_path):
    marker = tmp_path / 'pwned'
    sd = _trunk_sd()
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': sd, 'meta': {'hook': Evil(marker)}}, path)
    model, trunk = _model(str(path))
    model.init_weights()
    assert not marker.exists()
    assert torch.equal(trunk.fc1.weight, sd['fc1.weight'])
    _, skipped = read_checkpoint(str(path))
    assert skipped == ['posix.system']


def test_malicious_state_dict_is_an_error_that_explains_trust(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': Evil(marker)}, path)
    model, _ = _model(str(path))
    with pytest.raises(CheckpointError, match='trust_checkpoint=True'):
        model.init_weights()
    with pytest.raises(CheckpointError,
                       match=r'load_checkpoint: .*evil\.pth holds a posix\.'
                       'system object instead of a state dict'):
        load_checkpoint(model, str(path))  # MMEngine's loader
    whole = tmp_path / 'evil_whole.pth'  # the file is one object
    torch.save(Evil(marker), whole)
    with pytest.raises(CheckpointError,
                       match=r'evil_whole\.pth holds a posix\.system object'):
        load_checkpoint(model, str(whole))
    assert not marker.exists()


def test_trust_checkpoint_rebuilds_custom_objects(tmp_path):
    sd = _trunk_sd()
    path = tmp_path / 'note.pth'
    torch.save({'state_dict': {**sd, 'note': Note()}}, path)
    model, _ = _model(str(path))
    with pytest.raises(CheckpointError, match=r"'note' is a .*Note"):
        model.init_weights()
    model, trunk = _model(str(path), trust_checkpoint=True)
    model.init_weights()
    assert torch.equal(trunk.fc2.bias, sd['fc2.bias'])
    ckpt, _ = read_checkpoint(str(path), trust=True)
    assert isinstance(ckpt['state_dict']['note'], Note)


def test_missing_file_names_file_and_entry():
    model, _ = _model('/nonexistent/x.pth')
    with pytest.raises(CheckpointError,
                       match=r"init_cfg of 'backbone' \(Pretrained\).*"
                       r'not found: /nonexistent/x.pth'):
        model.init_weights()


def test_truncated_checkpoint(save_ckpt):
    path = save_ckpt(_trunk_sd())
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    model, _ = _model(path)
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        model.init_weights()


def test_empty_state_dict(save_ckpt):
    model, _ = _model(save_ckpt({}))
    with pytest.raises(CheckpointError, match='empty state dict'):
        model.init_weights()


def test_non_finite_tensor_named_and_switch(save_ckpt):
    sd = _trunk_sd()
    sd['fc2.weight'][0, 0] = float('nan')
    path = save_ckpt(sd)
    model, _ = _model(path)
    with pytest.raises(CheckpointError, match="'fc2.weight' holds NaN"):
        model.init_weights()
    model, trunk = _model(path, check_finite=False)
    model.init_weights()
    assert torch.isnan(trunk.fc2.weight[0, 0])


def test_nothing_matches_lists_prefixes_and_suggests(save_ckpt):
    path = save_ckpt({'backbone.' + k: v for k, v in _trunk_sd().items()})
    model, _ = _model(path)
    with pytest.raises(CheckpointError,
                       match=r"'backbone\.' \(6 keys\).*prefix='backbone\.' "
                       r'would load 100%'):
        model.init_weights()


def test_missing_model_prefix_suggests_revise_keys(save_ckpt):
    path = save_ckpt({'fc1.weight': torch.ones(8, 8)})
    model = Model(Trunk(), init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError,
                       match=r"revise_keys=\[\(r'\^', 'backbone\.'\)\]"):
        model.init_weights()


def test_strict_and_min_loaded(save_ckpt):
    sd = _trunk_sd()
    sd['surplus'] = torch.zeros(1)
    path = save_ckpt(sd)
    model, _ = _model(path, strict=True)
    with pytest.raises(CheckpointError, match='unexpected keys: surplus'):
        model.init_weights()
    trunk = Trunk(init_cfg=dict(type='Pretrained', checkpoint=path,
                                min_loaded=0.9))
    trunk.big = nn.Linear(64, 64)
    with pytest.raises(CheckpointError, match='below min_loaded=0.9'):
        trunk.init_weights()


def test_revise_and_ignore_keys(save_ckpt):
    sd = _trunk_sd()
    path = save_ckpt({'trunk.' + k: v for k, v in sd.items()})
    model, trunk = _model(
        path, revise_keys=[(r'^trunk\.', '')], ignore_keys=[r'.*fc2\..*'],
        init_missing=dict(type='Constant', val=3, layer='Linear'))
    model.init_weights()
    assert torch.equal(trunk.fc1.weight, sd['fc1.weight'])
    assert torch.all(trunk.fc2.weight == 3)
    entry = get_provenance(model).entries['backbone.fc1.weight']
    assert entry.key == 'trunk.fc1.weight'


def test_unknown_pretrained_key_names_the_entry(save_ckpt):
    model, _ = _model(save_ckpt(_trunk_sd()), prefx='backbone.')
    with pytest.raises(InitConfigError,
                       match=r"init_cfg of 'backbone'.*prefx"):
        model.init_weights()


def test_half_precision_checkpoint_is_cast_and_reported(save_ckpt):
    sd = {k: v.half() for k, v in _trunk_sd().items()}
    model, trunk = _model(save_ckpt(sd))
    model.init_weights()
    assert trunk.fc1.weight.dtype == torch.float32
    assert torch.equal(trunk.fc1.weight, sd['fc1.weight'].float())
    entry = get_provenance(model).entries['backbone.fc1.weight']
    assert entry.notes == ('cast torch.float16 -> torch.float32', )


def test_getattr_cannot_reach_dangerous_methods(tmp_path):
    """``getattr`` is allowed for HistoryBuffer methods only: an
    ``ndarray.tofile`` gadget must stay inert."""

    class Gadget:

        def __reduce__(self):
            return (getattr(np.ndarray, 'tofile'),
                    (np.zeros(1), str(tmp_path / 'written')))

    path = tmp_path / 'gadget.pth'
    torch.save({'state_dict': _trunk_sd(), 'meta': Gadget()}, path)
    model, _ = _model(str(path))
    model.init_weights()
    assert not (tmp_path / 'written').exists()


@pytest.mark.parametrize('wrap', ['model', 'module_prefix', 'bare'])
def test_checkpoint_wrappers_are_unwrapped(save_ckpt, wrap):
    sd = _trunk_sd()
    if wrap == 'model':
        obj = {'model': sd, 'epoch': 3}
    elif wrap == 'module_prefix':
        obj = {'state_dict': {'module.' + k: v for k, v in sd.items()}}
    else:
        obj = sd
    model, trunk = _model(save_ckpt(obj, wrap=False))
    model.init_weights()
    assert torch.equal(trunk.norm.weight, sd['norm.weight'])


def test_key_map_and_on_mismatch(save_ckpt):
    sd = _trunk_sd()
    sd['old.proj.weight'] = sd.pop('fc2.weight')
    sd['fc2.bias'] = torch.zeros(3)  # wrong shape
    path = save_ckpt(sd)
    model, trunk = _model(path, key_map={'old.proj.weight': 'fc2.weight'},
                          init_missing=dict(type='Constant', val=1,
                                            layer='Linear'))
    model.init_weights()
    assert torch.equal(trunk.fc2.weight, sd['old.proj.weight'])
    assert torch.all(trunk.fc2.bias == 0)  # Constant's bias=0, not loaded
    record = get_provenance(model).loads[0]
    assert record.mismatched == [('backbone.fc2.bias', (3, ), (8, ))]
    model, _ = _model(path, key_map={'old.proj.weight': 'fc2.weight'},
                      on_mismatch='error')
    with pytest.raises(CheckpointError, match=r'fc2.bias checkpoint \(3,\) '
                       r'vs model \(8,\)'):
        model.init_weights()


def test_match_suffix_and_ambiguity(save_ckpt):
    sd = _trunk_sd()
    path = save_ckpt({'detector.trunk.' + k: v for k, v in sd.items()})
    model, trunk = _model(path, match='suffix')
    model.init_weights()
    assert torch.equal(trunk.norm.bias, sd['norm.bias'])
    assert get_provenance(model).entries['backbone.norm.bias'].key == \
        'detector.trunk.norm.bias'
    ambiguous = save_ckpt({'a.fc1.weight': sd['fc1.weight'],
                           'b.fc1.weight': sd['fc1.weight']})
    model, _ = _model(ambiguous, match='suffix')
    with pytest.raises(InitConfigError,
                       match=r"'a.fc1.weight' and 'b.fc1.weight' equally"):
        model.init_weights()


@pytest.mark.parametrize('values, finite', [
    ([1.0, -2.0], True),
    ([3e38, 3e38, -1.0], True),  # the sum overflows, the values do not
    ([1.0, float('nan')], False),
    ([float('inf'), 1.0], False),
    ([-float('inf'), float('inf')], False),  # sums to NaN
])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_all_finite(values, finite, dtype):
    t = torch.tensor(values, dtype=torch.float64).to(dtype)
    expected = finite and bool(torch.isfinite(t).all())  # fp16 saturates
    assert all_finite(t) == expected



def _two_blocks(path, **options):
    """Two mmdet Bottlenecks (``layer.0...``, ``layer.1...``) under one
    ``Pretrained`` entry."""
    from mmdet.models.backbones.resnet import Bottleneck
    from mmdet.models.layers import ResLayer
    from mmengine.model import BaseModule

    class TwoBlocks(BaseModule):
        def __init__(self):
            super().__init__(init_cfg=dict(type='Pretrained', checkpoint=path,
                                           **options))
            self.layer = ResLayer(Bottleneck, 64, 16, 2)

    return TwoBlocks()


def test_one_checkpoint_key_claimed_by_two_model_keys(save_ckpt):
    """A file of one Bottleneck (``conv1.weight``...) for two: the suffix
    rule cannot tell which block a key is for. The suggestions of the
    nothing-matched error skip that mapping (they raised a bare KeyError),
    and ``match='suffix'`` names both model keys."""
    from mmdet.models.backbones.resnet import Bottleneck
    path = save_ckpt(Bottleneck(64, 16).state_dict())
    with pytest.raises(CheckpointError, match=r"nothing in .* matches the "
                       r"module with no key mapping\. Most common"):
        _two_blocks(path).init_weights()
    with pytest.raises(InitConfigError, match=r"checkpoint key 'conv1.weight'"
                       r" is the best match of model keys 'layer.0.conv1."
                       r"weight' and 'layer.1.conv1.weight'"):
        _two_blocks(path, match='suffix').init_weights()
