"""One unchanged OpenMMLab 1.x train script (mmcls 0.25's tools/train.py)
fine-tunes through the plugin: ``configs/mmcls/resnet18_adapter_freeze_tiny.py``
on generated images and a generated checkpoint, adapters inserted, the
loaded tensors frozen; then resumes from its own Runner checkpoint through
the safe reader (numpy in a Runner's meta: tests/mmcv1/test_checkpoint.py)."""
import glob
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmcls.models import ResNet

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent
CONFIG = HERE.parent.parent / 'configs' / 'mmcls' / \
    'resnet18_adapter_freeze_tiny.py'


def _make_data(root: Path) -> None:
    """Two classes of 32x32 images told apart by brightness."""
    rng = np.random.default_rng(0)
    for split, count in (('train', 8), ('val', 4)):
        for name, level in (('dark', 40), ('light', 200)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                noise = rng.normal(0, 20, (32, 32, 3))
                cv2.imwrite(str(folder / f'{i}.png'),
                            np.clip(level + noise, 0, 255).astype(np.uint8))


def _train(tmp_path: Path, work: str, *extra: str) -> str:
    args = [sys.executable, str(HERE / 'launch_train.py'), str(CONFIG),
            '--work-dir', work, '--cfg-options',
            f'model.backbone.init_cfg.checkpoint={tmp_path / "r18.pth"}',
            *(f'data.{s}.data_prefix={tmp_path / "data" / d}'
              for s, d in (('train', 'train'), ('val', 'val'),
                           ('test', 'val'))), *extra]
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    (log, ) = sorted(glob.glob(os.path.join(work, '*.log')))[-1:]
    return Path(log).read_text()


def test_mmcls_train_script_finetunes_with_inserted_adapters(tmp_path):
    _make_data(tmp_path / 'data')
    torch.manual_seed(0)
    source = ResNet(depth=18).state_dict()
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.items()},
                'meta': {}}, tmp_path / 'r18.pth')
    work = str(tmp_path / 'work')
    log = _train(tmp_path, work)
    assert 'mmext_init: initialization report for ImageClassifier' in log
    assert ('backbone.layer4.{0..1}.adapter.up.{weight,bias} <- '
            'Constant(val=0)') in log
    assert 'mmext_init: trainable parameters of ImageClassifier' in log

    state = torch.load(os.path.join(work, 'epoch_2.pth'),
                       map_location='cpu')['state_dict']
    for name, value in source.items():  # frozen: bit for bit the source
        assert torch.equal(state[f'backbone.{name}'], value), name
    assert state['backbone.layer4.1.adapter.up.weight'].count_nonzero() > 0

    resumed = str(tmp_path / 'resumed')
    log = _train(tmp_path, resumed, 'runner.max_epochs=2',
                 f'resume_from={os.path.join(work, "epoch_1.pth")}')
    assert 'resumed epoch 1' in log
    assert os.path.isfile(os.path.join(resumed, 'epoch_2.pth'))
