"""mmcv 1.x's ``CheckpointLoader`` through the safe reader: Runner
checkpoints with numpy meta load under torch >= 2.6, nothing in a file
runs, and ``open-mmlab://`` names resolve as stock resolves them."""
import os
import pickle

import numpy as np
import pytest
import torch
from mmcls.models import ResNet
from mmcv.runner import EpochBasedRunner, load_checkpoint
from mmcv.runner.checkpoint import get_external_models
from mmcv.utils import get_logger

import mmext_init
from mmext_init.checkpoint.remote import hub_cache_path
from mmext_init.errors import CheckpointError
from mmcls_models import classifier


def _runner_checkpoint(tmp_path) -> tuple:
    """A checkpoint written by mmcv 1.x's EpochBasedRunner, numpy in meta
    as its hooks leave it (EvalHook's best score)."""
    model = classifier()
    runner = EpochBasedRunner(
        model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        work_dir=str(tmp_path), logger=get_logger('mmcv1_test'),
        meta=dict(hook_msgs=dict(best_score=np.float64(0.75),
                                 best_ckpt='epoch_1.pth')), max_epochs=1)
    runner.save_checkpoint(str(tmp_path), create_symlink=False)
    return model, str(tmp_path / 'epoch_1.pth')


def test_runner_checkpoint_with_numpy_meta_loads(tmp_path):
    src, path = _runner_checkpoint(tmp_path)
    model = classifier()
    ckpt = load_checkpoint(model, path)
    assert ckpt['meta']['hook_msgs']['best_score'] == 0.75
    for name, value in model.state_dict().items():
        assert torch.equal(value, src.state_dict()[name]), name


def test_stock_mmcv1_refuses_it(tmp_path):
    """What the safe reader fixes: stock reads with torch's default
    weights_only=True, which refuses numpy scalars."""
    _, path = _runner_checkpoint(tmp_path)
    with mmext_init.stock_mmengine():
        with pytest.raises(pickle.UnpicklingError, match='Weights only'):
            load_checkpoint(classifier(), path)


class Evil:
    """Runs a shell command when unpickled (by a trusting reader)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_malicious_pickle_runs_nothing(tmp_path):
    model = classifier()
    marker = tmp_path / 'ran'
    path = str(tmp_path / 'evil_meta.pth')
    torch.save({'state_dict': model.state_dict(),
                'meta': {'hook': Evil(str(marker))}}, path)
    ckpt = load_checkpoint(classifier(), path)
    assert not marker.exists()
    assert ckpt['meta']['hook'].qualname == 'posix.system'
    bad = str(tmp_path / 'evil_state.pth')
    torch.save({'state_dict': Evil(str(marker))}, bad)
    net = ResNet(depth=18, init_cfg=dict(type='Pretrained', checkpoint=bad))
    with pytest.raises(CheckpointError, match='trust_checkpoint=True'):
        net.init_weights()
    with pytest.raises(CheckpointError,
                       match=r'load_checkpoint: .*evil_state\.pth holds a '
                       r'posix\.system object instead of a state dict'):
        load_checkpoint(classifier(), bad)  # mmcv's own loader
    assert not marker.exists()


def test_open_mmlab_name_read_safely(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    name, url = next((k, v) for k, v in get_external_models().items()
                     if v.startswith('https://'))
    src = classifier()
    cached = hub_cache_path(url)
    os.makedirs(os.path.dirname(cached))
    torch.save({'state_dict': src.state_dict(),
                'meta': {'best': np.float32(1.5)}}, cached)
    model = classifier()
    ckpt = load_checkpoint(model, f'open-mmlab://{name}')
    assert ckpt['meta']['best'] == np.float32(1.5)
    assert torch.equal(model.backbone.conv1.weight, src.backbone.conv1.weight)
