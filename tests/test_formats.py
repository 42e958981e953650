"""Checkpoint formats: safetensors, sharded indexes, EMA weights."""
import json

import pytest
import torch
from runner_utils import ToyModel, run_runner
from safetensors.torch import save_file
from test_safe_load import _trunk_sd as _sd
from toy_models import Trunk

from mmext_init import CheckpointError, get_provenance, read_checkpoint
from mmext_init.checkpoint.formats import open_checkpoint


def _load(path, **kwargs):
    trunk = Trunk(init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                **kwargs))
    trunk.init_weights()
    return trunk


def test_safetensors(tmp_path):
    sd = _sd()
    path = tmp_path / 'model.safetensors'
    save_file(sd, str(path))
    trunk = _load(path)
    for key, value in sd.items():
        assert torch.equal(trunk.state_dict()[key], value), key
    assert get_provenance(trunk).entries['fc1.weight'].source == str(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        _load(path)


def test_sharded_index_with_safetensors_and_torch_shards(tmp_path):
    sd = _sd()
    keys = sorted(sd)
    first, second = keys[:3], keys[3:]
    save_file({k: sd[k] for k in first}, str(tmp_path / 'part-1.safetensors'))
    torch.save({k: sd[k] for k in second}, tmp_path / 'part-2.bin')
    index = {'weight_map': {**{k: 'part-1.safetensors' for k in first},
                            **{k: 'part-2.bin' for k in second}}}
    path = tmp_path / 'model.index.json'
    path.write_text(json.dumps(index))
    trunk = _load(path)
    for key, value in sd.items():
        assert torch.equal(trunk.state_dict()[key], value), key
    (tmp_path / 'part-2.bin').unlink()
    with pytest.raises(CheckpointError,
                       match=r'missing shard part-2.bin \(holding e.g. '):
        _load(path)


def test_use_ema_takes_emahook_weights(tmp_path, runner_ckpt):
    run_runner(str(tmp_path), ToyModel(), iters=3,
               custom_hooks=[dict(type="EMAHook", momentum=0.5)])
    path = tmp_path / 'iter_3.pth'
    ckpt = read_checkpoint(str(path))[0]
    ema = ckpt['state_dict']  # EMAHook swaps: state_dict holds the EMA
    source = ckpt['ema_state_dict']
    assert not torch.equal(ema['backbone.fc1.weight'],
                           source['module.backbone.fc1.weight'])
    trunk = _load(path, prefix='backbone.', use_ema=True)
    assert torch.equal(trunk.fc1.weight, ema['backbone.fc1.weight'])
    with pytest.raises(CheckpointError, match='use_ema=True but .* has no EMA'):
        _load(runner_ckpt, prefix='backbone.', use_ema=True)


def test_mmdet2_style_ema_buffers(save_ckpt):
    sd = _sd()
    ema = {'ema_' + k.replace('.', '_'): v + 1 for k, v in sd.items()}
    trunk = _load(save_ckpt({**sd, **ema}), use_ema=True)
    assert torch.equal(trunk.fc2.weight, sd['fc2.weight'] + 1)


def test_dtypes_reported_from_headers(tmp_path):
    sd = {'a': torch.zeros(2, dtype=torch.bfloat16),
          'b': torch.zeros(3, dtype=torch.float16), 'c': torch.zeros(1)}
    save_file(sd, str(tmp_path / 'm.safetensors'))
    torch.save(sd, tmp_path / 'm.pth')
    for name in ('m.safetensors', 'm.pth'):
        t = open_checkpoint(str(tmp_path / name))
        assert {k: t.dtype(k) for k in sd} == {k: v.dtype
                                               for k, v in sd.items()}
        assert t.get('a').dtype == torch.bfloat16  # never cast here


def test_only_shards_holding_used_tensors_are_opened(tmp_path):
    """A backbone taken from a sharded detector checkpoint never opens the
    head's shard (here unreadable on purpose); a corrupt index is an error."""
    sd = _sd()
    save_file({'backbone.' + k: v for k, v in sd.items()},
              str(tmp_path / 'part-1.safetensors'))
    (tmp_path / 'part-2.safetensors').write_bytes(b'not a safetensors file')
    index = {'weight_map': {**{'backbone.' + k: 'part-1.safetensors'
                               for k in sd},
                            'head.weight': 'part-2.safetensors'}}
    path = tmp_path / 'model.safetensors.index.json'
    path.write_text(json.dumps(index))
    trunk = _load(path, prefix='backbone.')
    assert torch.equal(trunk.fc1.weight, sd['fc1.weight'])
    with pytest.raises(CheckpointError, match='part-2.safetensors: the file '
                       'is truncated or corrupt'):
        _load(path, key_map={'head.weight': 'fc1.weight'})  # needs part 2
    with pytest.raises(CheckpointError, match='has no EMA weights|holds no EMA'):
        _load(path, use_ema=True)
    path.write_text('{"weight_map": ')
    with pytest.raises(CheckpointError, match='is not a valid index file'):
        _load(path)


def _two_shards(tmp_path, sd, torch_shards=False):
    keys = sorted(sd)
    parts = {'part-1': keys[:3], 'part-2': keys[3:]}
    ext = '.bin' if torch_shards else '.safetensors'
    for name, part in parts.items():
        chunk = {k: sd[k] for k in part}
        if torch_shards:
            torch.save(chunk, tmp_path / (name + ext))
        else:
            save_file(chunk, str(tmp_path / (name + ext)))
    index = {'weight_map': {k: name + ext for name, part in parts.items()
                            for k in part}}
    path = tmp_path / 'model.index.json'
    path.write_text(json.dumps(index))
    return path, index


@pytest.mark.parametrize('value', [3, None, ['part-1.safetensors'],
                                   'model.index.json'])
def test_index_mapping_a_key_to_no_shard_file(tmp_path, value):
    """A corrupt index (a number, null or list where a shard file name
    belongs, or an index naming an index) is an error naming the index and
    the key, not a TypeError or a recursion."""
    path, index = _two_shards(tmp_path, _sd())
    key = sorted(index['weight_map'])[0]
    index['weight_map'][key] = value
    path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"index .*model.index.json "
                       rf"maps '{key}' to .*not a shard file name"):
        _load(path)


@pytest.mark.parametrize('text', ['[1, 2]', '{"weight_map": []}',
                                  '"\\u00e9"', '\xff\xfe'])
def test_index_that_is_no_json_object(tmp_path, text):
    path = tmp_path / 'model.index.json'
    path.write_bytes(text.encode('latin-1'))
    with pytest.raises(CheckpointError, match='model.index.json (has no '
                       'weight_map|is not a valid index file)'):
        _load(path)


@pytest.mark.parametrize('torch_shards', [False, True])
def test_non_finite_tensor_in_a_shard_names_the_shard(tmp_path, torch_shards):
    sd = _sd()
    key = sorted(sd)[-1]  # in part-2
    sd[key].view(-1)[0] = float('nan')
    path, _ = _two_shards(tmp_path, sd, torch_shards)
    ext = '.bin' if torch_shards else '.safetensors'
    trunk = Trunk(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"model.index.json: tensor "
                       rf"'{key}' holds NaN.*\(in shard .*part-2{ext}\)"):
        trunk.init_weights()
    for name, value in trunk.state_dict().items():  # nothing half-loaded
        assert torch.equal(value, before[name]), name
