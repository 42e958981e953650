"""Checkpoints named by URL or model-zoo scheme, as the shipped configs name
them: stock MMEngine's mapping, torch hub's cache and the same tensors as
stock, read without running code; the exception types stock raises; and
``init_provenance.json`` only for Runner runs."""
import os
from urllib.error import URLError

import pytest
import torch
import torchvision
from mmdet.models.backbones import ResNet
from mmengine.logging import MMLogger
from mmengine.runner import CheckpointLoader, load_checkpoint
from mmengine.runner.checkpoint import (get_external_models,
                                        get_mmcls_models,
                                        get_torchvision_models)
from mmseg.models.backbones import MixVisionTransformer, ResNetV1c

import mmext_init
from mmext_init import CheckpointError, get_provenance
from mmext_init.checkpoint.remote import hub_cache_path

OPENMMLAB_URL = 'https://download.openmmlab.com/x/net_20220101-abcd.pth'


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A fresh ``TORCH_HOME``: what torch hub caches goes there."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return tmp_path / 'torch_home'


def _cache(url, state_dict, wrap=True, extra=None):
    """Put ``url``'s file into torch hub's cache, as after one online run."""
    path = hub_cache_path(url)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    obj = dict(state_dict=state_dict, **(extra or {})) if wrap else state_dict
    torch.save(obj, path)
    return path


def _random_state(module):
    return {k: torch.randn_like(v) if v.is_floating_point() else v + 3
            for k, v in module.state_dict().items()}


def _built_and_initialized(build, stock):
    torch.manual_seed(1)
    if stock:
        with mmext_init.stock_mmengine():
            model = build()
            model.init_weights()
    else:
        model = build()
        model.init_weights()
    return model


def _assert_same_as_stock(build):
    """Stock and the plugin build and load the same tensors, bit for bit;
    returns the plugin's model."""
    stock = _built_and_initialized(build, stock=True)
    ours = _built_and_initialized(build, stock=False)
    stock_sd, ours_sd = stock.state_dict(), ours.state_dict()
    assert stock_sd.keys() == ours_sd.keys()
    for key, value in stock_sd.items():
        assert torch.equal(value, ours_sd[key]), key
    return ours


def test_https_pretrained_loads_from_the_hub_cache_as_stock(torch_home):
    state = _random_state(ResNet(depth=18))
    _cache(OPENMMLAB_URL, state)

    def build():
        return ResNet(depth=18, init_cfg=dict(type='Pretrained',
                                              checkpoint=OPENMMLAB_URL))

    model = _assert_same_as_stock(build)
    assert torch.equal(model.conv1.weight, state['conv1.weight'])
    entry = get_provenance(model).entries['conv1.weight']
    assert (entry.kind, entry.source) == ('checkpoint', OPENMMLAB_URL)


def test_open_mmlab_name_maps_through_mmengines_table(torch_home):
    url = get_external_models()['resnet50_v1c']
    state = _random_state(ResNetV1c(depth=50))
    _cache(url, state)

    def build():
        return ResNetV1c(depth=50, init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://resnet50_v1c'))

    model = _assert_same_as_stock(build)
    assert torch.equal(model.stem[0].weight, state['stem.0.weight'])


def test_torchvision_name_reads_torchvisions_file(torch_home):
    url = get_torchvision_models()['resnet18']
    tv_state = _random_state(torchvision.models.resnet18())
    _cache(url, tv_state, wrap=False)  # torchvision files are bare

    def build():
        return ResNet(depth=18, init_cfg=dict(
            type='Pretrained', checkpoint='torchvision://resnet18'))

    model = _assert_same_as_stock(build)
    assert torch.equal(model.layer1[0].conv1.weight,
                       tv_state['layer1.0.conv1.weight'])
    assert 'fc.weight' not in model.state_dict()


def test_mmcls_name_keeps_the_backbone_keys_as_stock(torch_home):
    name = next(iter(get_mmcls_models()))
    url = get_mmcls_models()[name]
    backbone = _random_state(ResNet(depth=18))
    state = {'backbone.' + k: v for k, v in backbone.items()}
    state['head.fc.weight'] = torch.randn(10, 512)
    _cache(url, state)

    def build():
        return ResNet(depth=18, init_cfg=dict(type='Pretrained',
                                              checkpoint=f'mmcls://{name}'))

    model = _assert_same_as_stock(build)
    assert torch.equal(model.conv1.weight, backbone['conv1.weight'])
    entry = get_provenance(model).entries['conv1.weight']
    assert entry.key == 'backbone.conv1.weight'


def test_self_loading_backbone_reads_a_url_like_stock(torch_home):
    """mmseg's MiT converts and loads the file in its own init_weights,
    through MMEngine's CheckpointLoader (now the safe scheme)."""
    url = ('https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/'
           'segformer/mit_b0_20220624-7e0fe6dd.pth')
    kw = dict(embed_dims=16, num_heads=[1, 1, 1, 1], num_layers=[1, 1, 1, 1])
    _cache(url, _random_state(MixVisionTransformer(**kw)))

    def build():
        return MixVisionTransformer(
            **kw, init_cfg=dict(type='Pretrained', checkpoint=url))

    model = _assert_same_as_stock(build)
    entry = get_provenance(model).entries['layers.0.0.projection.weight']
    assert (entry.kind, entry.source) == ('checkpoint', url)


def test_load_checkpoint_of_a_url_runs_no_code_from_the_file(
        torch_home, tmp_path, runner_ckpt):
    """load_from / init_detector with a URL: a Runner checkpoint (numpy
    meta) loads, and a payload in the file does not run (stock reads a
    download with weights_only=False)."""
    marker = tmp_path / 'payload_ran'
    ckpt = torch.load(runner_ckpt, weights_only=False)
    ckpt['meta']['evil'] = _Payload(str(marker))
    url = 'https://download.openmmlab.com/x/iter_2.pth'
    path = hub_cache_path(url)
    os.makedirs(os.path.dirname(path))
    torch.save(ckpt, path)
    from runner_utils import ToyModel
    model = ToyModel()
    loaded = load_checkpoint(model, url)
    assert not marker.exists()
    assert loaded['meta']['epoch'] == ckpt['meta']['epoch']
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt['state_dict'][key]), key
    with mmext_init.stock_mmengine():  # the same file in stock runs it
        load_checkpoint(ToyModel(), url)
    assert marker.exists()


class _Payload:

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path, ))


def test_offline_download_error_names_entry_url_and_cache_path(torch_home):
    url = 'http://127.0.0.1:9/models/r18_offline.pth'  # refused at once
    model = ResNet(depth=18,
                   init_cfg=dict(type='Pretrained', checkpoint=url))
    with pytest.raises(URLError) as info:
        model.init_weights()
    message = str(info.value)
    assert isinstance(info.value, CheckpointError)
    assert "init_cfg of the model root (ResNet) (Pretrained)" in message
    assert url in message and hub_cache_path(url) in message


def test_unknown_zoo_name_is_a_key_error_with_the_close_names(torch_home):
    model = ResNetV1c(depth=50, init_cfg=dict(
        type='Pretrained', checkpoint='open-mmlab://resnet50_v1'))
    with pytest.raises(KeyError, match="did you mean 'resnet50_v1c'"):
        model.init_weights()


def test_errors_keep_the_stock_exception_types(tmp_path):
    """mmseg's own tests (test_mit_init, test_vit_init, ...) expect these."""
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError):
        load_checkpoint(ResNet(depth=18), missing)
    kw = dict(embed_dims=16, num_heads=[1, 1, 1, 1], num_layers=[1, 1, 1, 1])
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        MixVisionTransformer(**kw, pretrained=missing).init_weights()
    with pytest.raises(TypeError):
        MixVisionTransformer(**kw, init_cfg=123).init_weights()
    for scheme in CheckpointLoader._schemes:  # every scheme read safely
        assert CheckpointLoader._schemes[scheme].__module__.startswith(
            'mmext_init'), scheme


def test_provenance_json_only_for_runner_runs(tmp_path):
    """A logger with a file handler but no Runner: the log gets the report,
    no JSON file is written beside it (MMEngine's test_dump_init_info)."""
    dump_dir = tmp_path / 'dump'
    dump_dir.mkdir()
    MMLogger.get_instance('no_runner_logger',
                          log_file=str(dump_dir / 'out.log'))
    model = ResNet(depth=18)
    model.init_weights()
    assert sorted(os.listdir(dump_dir)) == ['out.log']
    from runner_utils import ToyModel, run_runner
    work_dir = tmp_path / 'run'
    runner = run_runner(str(work_dir), ToyModel())
    assert os.path.isfile(os.path.join(runner.log_dir,
                                       'init_provenance.json'))
