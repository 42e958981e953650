"""The stock mmdet/mmseg train scripts, unchanged, on the tiny configs."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import checkpoint_state, library_script

STOCK_LINE = 'The value is the same before and after calling'
CASES = [
    ('configs/mmdet/retinanet_r18_adapters_ft_tiny.py', 'mmdet',
     'retinanet_r18_stock_tiny.pth'),
    ('configs/mmdet/retinanet_swin_adapters_ft_tiny.py', 'mmdet',
     'retinanet_swin_stock_tiny.pth'),
    ('configs/mmseg/segformer_mit_adapters_ft_tiny.py', 'mmseg',
     'segformer_mit_stock_tiny.pth'),
]


def _check_run(run, ckpt):
    weights = run.snapshots[0]
    backbone = {k: v for k, v in ckpt.items() if k.startswith('backbone.')}
    assert backbone
    for key, value in backbone.items():  # bit for bit
        assert torch.equal(weights[key], value), key
    entries = run.provenance['entries']
    adapters = sorted({k.split('.')[2] for k in weights
                       if k.startswith('backbone.adapters.')})
    assert adapters
    for i in adapters:
        up = weights[f'backbone.adapters.{i}.up.weight']
        assert torch.count_nonzero(up) == 0
        down = weights[f'backbone.adapters.{i}.down.weight']
        fan_out = down.shape[0]  # Kaiming, mode fan_out, 1x1 kernels
        assert abs(down.std().item() / (2 / fan_out)**0.5 - 1) < 0.3
        assert entries[f'backbone.adapters.{i}.down.weight']['source'] == \
            'Kaiming'
        assert entries[f'backbone.adapters.{i}.up.weight']['source'] == 'Zero'
    for name in weights:
        kind = entries[name]['kind']
        assert (kind == 'checkpoint') == (name in backbone), name
    assert run.log.count('mmext_init: initialization report') == 1
    assert STOCK_LINE not in run.log


@pytest.mark.parametrize('config, library, ckpt_name', CASES,
                         ids=['retinanet_r18', 'retinanet_swin', 'segformer'])
def test_tiny_config_through_stock_train_script(train, tiny_dir, config,
                                                library, ckpt_name):
    run = train(config, library)
    _check_run(run, checkpoint_state(tiny_dir, ckpt_name))


def test_distributed_two_ranks_identical_and_one_report(train, tiny_dir):
    """torchrun, 2 ranks (gloo, CPU), with LSUVInitHook on the new head:
    identical weights on both ranks, one report, LSUV in the ledger."""
    config, library, ckpt_name = CASES[0]
    run = train(config, library, nproc=2, extra_hooks=(
        "dict(type='LSUVInitHook', include='bbox_head'), "))
    assert len(run.snapshots) == 2
    for key, value in run.snapshots[0].items():
        assert torch.equal(value, run.snapshots[1][key]), key
    assert len(run.provenance_files) == 1  # rank 0 only
    _check_run(run, checkpoint_state(tiny_dir, ckpt_name))
    entry = run.provenance['entries']['bbox_head.retina_reg.weight']
    assert entry['notes'][0].startswith('LSUVInitHook scaled x')
    assert 'LSUVInitHook: rescaled 4 layers' in run.log


def test_mmdet_test_script_and_init_detector(train, tiny_dir):
    config, library, _ = CASES[0]
    run = train(config, library)
    trained = os.path.join(run.work_dir, 'iter_4.pth')
    proc = subprocess.run(
        [sys.executable, library_script('mmdet', 'test'),
         os.path.join(tiny_dir, 'retinanet_r18_adapters_ft_tiny_1.py'),
         trained, '--work-dir', os.path.join(tiny_dir, 'test_run')],
        cwd=tiny_dir, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Evaluating bbox' in proc.stdout + proc.stderr

    import mmext_init  # noqa: F401
    from mmdet.apis import inference_detector, init_detector
    cwd = os.getcwd()
    os.chdir(tiny_dir)
    try:
        model = init_detector(os.path.join(
            tiny_dir, 'retinanet_r18_adapters_ft_tiny_1.py'), trained,
            device='cpu')
        result = inference_detector(
            model, os.path.join(tiny_dir, 'data/tiny_coco/val/val_000.jpg'))
    finally:
        os.chdir(cwd)
    state = checkpoint_state(os.path.dirname(trained), 'iter_4.pth') \
        if False else mmext_init.read_checkpoint(trained)[0]['state_dict']
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
        assert torch.isfinite(value.float()).all(), key
    assert result.pred_instances.bboxes.shape[-1] == 4
