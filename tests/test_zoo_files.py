"""The zoo sweep's files for configs as shipped (mmext_init.tools.zoo: urls,
layouts, files, the ``shipped`` verdict): checkpoint names to
the hub-cache file mmext_init reads, the original Swin/PVT layouts that
mmdet's converters map back, and generated files that stock and the plugin
load to the same bits (the whole sweep runs in tests/e2e/test_zoo.py)."""
import os
import warnings

import pytest
import torch
from mmcv.cnn import ConvModule
from mmdet.models.backbones.pvt import pvt_convert
from mmdet.models.backbones.swin import swin_converter
from mmengine.config import ConfigDict
from mmengine.model import BaseModule
from mmengine.registry import MODELS

import mmext_init
from mmext_init.checkpoint.remote import resolve_checkpoint

from mmext_init.tools.zoo.files import CLOSED, make_files, worker_env
from mmext_init.tools.zoo.layouts import (pvt_original, random_state,
                                          swin_original)
from mmext_init.tools.zoo.models import (bit_equal, seed_all, setup_scope,
                                         state_of, stock_reach)
from mmext_init.tools.zoo.urls import (checkpoint_url, find_refs,
                                       hub_cache_path, strip_refs)
from mmext_init.tools.zoo.verdicts import (check_deferral, check_shipped,
                                           check_vs_stock, skipped_draws)

SWIN = dict(type='SwinTransformer', embed_dims=16, depths=(1, 1),
            num_heads=(1, 2), strides=(4, 2), out_indices=(0, 1),
            window_size=4, pretrain_img_size=32, convert_weights=True)
PVT = dict(type='PyramidVisionTransformer', embed_dims=8,
           num_layers=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
           pretrain_img_size=64)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A fresh ``TORCH_HOME``, the network closed as in the sweep."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    for var in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY'):
        monkeypatch.setenv(var, CLOSED)
    for var in ('no_proxy', 'NO_PROXY'):
        monkeypatch.delenv(var, raising=False)
    setup_scope('mmdet')
    return tmp_path / 'torch_home'


def test_find_and_strip_refs():
    cfg = dict(type='M', pretrained='open-mmlab://resnet50_v1c',
               backbone=dict(type='B', init_cfg=dict(
                   type='Pretrained', checkpoint='torchvision://resnet50')),
               neck=dict(type='N', init_cfg=[
                   dict(type='Xavier', layer='Conv2d'),
                   dict(type='Pretrained', checkpoint='n.pth')]),
               head=dict(type='H', init_cfg=dict(type='Normal', std=.1)),
               keep=dict(pretrained=True))
    refs = find_refs(cfg)
    assert [(r.name, r.kind, r.module_path, r.index) for r in refs] == [
        ('open-mmlab://resnet50_v1c', 'pretrained', (), None),
        ('torchvision://resnet50', 'init_cfg', ('backbone',), None),
        ('n.pth', 'init_cfg', ('neck',), 1)]
    strip_refs(cfg, refs)
    assert cfg['pretrained'] is None and cfg['backbone']['init_cfg'] is None
    assert cfg['neck']['init_cfg'] == [dict(type='Xavier', layer='Conv2d')]
    assert cfg['head']['init_cfg'] == dict(type='Normal', std=.1)
    assert cfg['keep'] == dict(pretrained=True) and not find_refs(cfg)


@pytest.mark.parametrize('name', [
    'torchvision://resnet50', 'open-mmlab://resnet50_v1c',
    'open-mmlab://detectron2/resnet50_caffe', 'open-mmlab://msra/hrnetv2_w32',
    'open-mmlab://resnet50_caffe',  # deprecated: detectron/resnet50_caffe
    'mmcls://resnet18',
    'https://download.openmmlab.com/x/mit_b0_20220624-7e0fe6dd.pth'])
def test_sweep_and_mmext_init_read_the_same_cache_file(name, torch_home):
    path = hub_cache_path(checkpoint_url(name))
    assert path.startswith(str(torch_home / 'hub' / 'checkpoints') + os.sep)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({'state_dict': {}}, path)
    with warnings.catch_warnings():  # a deprecated name warns, as stock
        warnings.simplefilter('ignore', DeprecationWarning)
        assert resolve_checkpoint(name).path == path


@pytest.mark.parametrize('name', ['pretrain/deit_small.pth',
                                  'open-mmlab://no_such_model'])
def test_names_stock_does_not_download_have_no_url(name):
    with pytest.raises(ValueError):
        checkpoint_url(name)


@pytest.mark.parametrize('cfg, convert', [(SWIN, swin_converter),
                                          (PVT, pvt_convert)])
def test_original_layouts_invert_mmdet_converters(cfg, convert):
    setup_scope('mmdet')
    with mmext_init.stock_mmengine():
        module = MODELS.build(dict(cfg))
    state = random_state(module, 'https://x/y.pth')
    original = (swin_original if cfg is SWIN else pvt_original)(state)
    assert set(original) != set(state)  # really another layout
    back = convert(original)
    back = {k[len('backbone.'):] if k.startswith('backbone.') else k: v
            for k, v in back.items()}
    assert sorted(back) == sorted(state)
    assert all(bit_equal(back[k].reshape(state[k].shape), state[k])
               for k in state)


def _shipped(cfg):
    """Files for ``cfg``'s references (stock build without them), then the
    stock and plugin builds as shipped: (files, stock state, plugin state,
    plugin ledger)."""
    cfg = ConfigDict(cfg)  # as read from a config file
    refs = find_refs(cfg)
    bare = ConfigDict(cfg, init_cfg=None)
    with mmext_init.stock_mmengine():
        seed_all(0)
        files = make_files(MODELS.build(bare), refs)
        seed_all(0)
        stock = MODELS.build(cfg)
        stock.init_weights()
    seed_all(0)
    plugin = MODELS.build(cfg)
    plugin.init_weights()
    return files, state_of(stock), state_of(plugin), \
        mmext_init.get_provenance(plugin)


@pytest.mark.parametrize('cfg, layout', [
    (dict(type='ResNet', depth=18, init_cfg=dict(
        type='Pretrained', checkpoint='torchvision://resnet18')),
     'torchvision'),
    (dict(type='ResNetV1d', depth=18, init_cfg=dict(
        type='Pretrained', checkpoint='open-mmlab://resnet18_v1c')),
     'plain'),
    (dict(SWIN, init_cfg=dict(type='Pretrained',
                              checkpoint='https://x/swin_tiny.pth')),
     'original'),
])
def test_generated_file_loads_bit_identical_in_stock_and_plugin(
        cfg, layout, torch_home):
    files, stock, plugin, ledger = _shipped(cfg)
    record, = files.records
    assert 'skip' not in record, record
    assert record['layout'] == layout
    assert record['file'] == hub_cache_path(checkpoint_url(cfg['init_cfg'][
        'checkpoint'])) and os.path.isfile(record['file'])
    floats = [k for k, v in stock.items() if v.is_floating_point()]
    assert sorted(files.expected) == sorted(floats)  # every tensor loaded
    assert all(bit_equal(stock[k], v) for k, v in files.expected.items())
    assert all(bit_equal(plugin[k], stock[k]) for k in stock)
    shipped = dict(records=files.records, loaded=sorted(files.expected))
    assert check_shipped(plugin, stock, ledger, shipped)['status'] == 'pass'
    name = floats[0]
    plugin[name] = plugin[name] + 1
    result = check_shipped(plugin, stock, ledger, shipped)
    assert result['status'] == 'fail' and name in result['differing']


def test_reference_stock_cannot_load_gets_no_file(torch_home):
    cfg = dict(type='ResNet', depth=18, init_cfg=dict(
        type='Pretrained', checkpoint='pretrain/r18_local.pth'))
    with mmext_init.stock_mmengine():
        files = make_files(MODELS.build(dict(cfg, init_cfg=None)),
                           find_refs(cfg))
    record, = files.records
    assert 'not a name stock downloads' in record['skip']
    assert len(files.unserved) == 1 and not files.expected
    assert check_shipped({}, {}, None, dict(records=files.records,
                                            loaded=[]))['status'] == 'n/a'


def test_deferral_verdict_allows_shifted_draws_of_unloaded_tensors(
        torch_home):
    cfg = dict(type='ResNet', depth=18, init_cfg=dict(
        type='Pretrained', checkpoint='torchvision://resnet18'))
    _, stock, plugin, ledger = _shipped(cfg)
    loaded = next(n for n, e in ledger.entries.items()
                  if e.kind == 'checkpoint')
    other = dict(plugin, extra=torch.ones(1))
    off = dict(plugin, extra=torch.zeros(1))
    assert check_deferral((other, None), (off, None), ledger)['status'] == \
        'pass'  # 'extra' is loaded from no file: its draws may move
    other[loaded] = other[loaded] + 1
    result = check_deferral((other, None), (off, None), ledger)
    assert result['status'] == 'fail' and result['differing'] == [loaded]


def test_worker_env_has_its_own_torch_home_and_no_network(tmp_path):
    env = worker_env(str(tmp_path))
    assert env['TORCH_HOME'] == str(tmp_path / 'torch_home')
    assert env['https_proxy'] == env['HTTP_PROXY'] == CLOSED
    assert 'no_proxy' not in env and env['OMP_NUM_THREADS'] == '1'


class _Net(BaseModule):
    """A pretrained MobileNetV2 (ConvModules: stock draws Kaiming for their
    convs before the load) and a randomly initialized head after it."""

    def __init__(self, checkpoint=None):
        super().__init__()
        init = checkpoint and dict(type='Pretrained', checkpoint=checkpoint)
        self.backbone = MODELS.build(dict(type='MobileNetV2', widen_factor=.25,
                                          out_indices=(7,), init_cfg=init))
        self.head = ConvModule(80, 4, 3)


def test_vs_stock_explains_draws_skipped_on_loaded_tensors(tmp_path):
    setup_scope('mmdet')
    path = str(tmp_path / 'mnv2.pth')
    with mmext_init.stock_mmengine():
        torch.save({'state_dict': random_state(_Net().backbone, path)}, path)
        seed_all(0)
        stock = _Net(path)
        stock.init_weights()
    seed_all(0)
    plugin, bare = _Net(path), _Net()
    plugin.init_weights()
    bare.init_weights()
    called, body_ran = stock_reach(stock)
    info = dict(called=sorted(called), body_ran=sorted(body_ran))
    ledger = mmext_init.get_provenance(plugin)
    ours, theirs = (state_of(plugin), None), (state_of(stock), None)
    result = check_vs_stock(ours, theirs, ledger, plugin, info)
    assert result['status'] == 'fail'
    assert result['unexplained'] == ['head.conv.weight']
    skipped = skipped_draws(ledger, mmext_init.get_provenance(bare), called,
                            body_ran)
    assert 'backbone.conv1' in skipped and 'head' not in skipped
    result = check_vs_stock(ours, theirs, ledger, plugin, info, skipped)
    assert result['status'] == 'pass', result
    assert result['counts']['skipped-draws'] == 1


class _C4(BaseModule):
    """A C4 detector's layout: a 3-stage ResNet and a ``shared_head`` with
    the 4th stage, both loading the same ResNet file."""

    def __init__(self, name=None):
        super().__init__()
        init = name and dict(type='Pretrained', checkpoint=name)
        self.backbone = MODELS.build(dict(
            type='ResNet', depth=50, num_stages=3, strides=(1, 2, 2),
            dilations=(1, 1, 1), out_indices=(2, ), init_cfg=init))
        self.shared_head = MODELS.build(dict(
            type='ResLayer', depth=50, stage=3, stride=2, dilation=1,
            init_cfg=init))


def test_a_file_two_modules_load_holds_the_keys_of_both(torch_home):
    name = 'open-mmlab://detectron2/resnet50_caffe'
    cfg = dict(backbone=dict(type='ResNet', init_cfg=dict(
        type='Pretrained', checkpoint=name)), shared_head=dict(
            type='ResLayer', init_cfg=dict(type='Pretrained',
                                           checkpoint=name)))
    with mmext_init.stock_mmengine():
        files = make_files(_C4(), find_refs(cfg))
        seed_all(0)
        stock = _C4(name)
        stock.init_weights()
    assert [r['layout'] for r in files.records] == ['plain', 'plain']
    plugin = _C4(name)
    plugin.init_weights()
    stock, plugin = state_of(stock), state_of(plugin)
    floats = sorted(k for k, v in stock.items() if v.is_floating_point())
    assert sorted(files.expected) == floats  # layer4.* too
    assert all(bit_equal(stock[k], files.expected[k]) and
               bit_equal(plugin[k], stock[k]) for k in floats)
