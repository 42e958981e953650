"""Inserting from the config, end to end: ``model = dict(..., insert=[...])`` in the tiny
configs, trained by mmdet's and mmseg's own, unchanged ``tools/train.py``:
the original names still load from the checkpoint, the inserted tensors
get their declared init and say in the ledger what inserted them, they
train while the loaded part stays frozen, and
``tools/check_function_preserving.py`` passes against the same config
without ``insert``."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, Run, assert_stack_rebuilds, subprocess_env
from mmengine.config import Config

from mmext_init import read_checkpoint

pytestmark = pytest.mark.e2e

BN_STATS = ('.running_mean', '.running_var', '.num_batches_tracked')
CASES = [  # config, library, inserted tensor suffixes, inserts per target
    ('configs/mmdet/retinanet_swin_lora_tiny.py', 'mmdet',
     ('.lora_A.weight', '.lora_B.weight'),
     'inserted by LoRA(rank=4, alpha=8) from insert[0]'),
    ('configs/mmseg/segformer_mit_lora_tiny.py', 'mmseg',
     ('.lora_A.weight', '.lora_B.weight'),
     'inserted by LoRA(rank=4, alpha=8) from insert[0]'),
    ('configs/mmdet/retinanet_r18_adapters_insert_tiny.py', 'mmdet',
     ('.adapter.down.weight', '.adapter.down.bias', '.adapter.up.weight',
      '.adapter.up.bias'),
     'inserted by Adapter(reduction=4) from insert[0]'),
]
IDS = ['swin_lora', 'segformer_lora', 'resnet_adapters']
DELTA_HOOK = "dict(type='DeltaCheckpointHook', interval=4, by_epoch=False), "
STOCK = {CASES[0][0]: 'retinanet_swin_stock_tiny.pth',
         CASES[1][0]: 'segformer_mit_stock_tiny.pth'}


def _inserted(run: Run, suffixes) -> list:
    names = sorted(n for n in run.snapshots[0] if n.endswith(suffixes))
    assert names
    return names


@pytest.mark.parametrize('config, library, suffixes, note', CASES, ids=IDS)
def test_insert_through_the_stock_train_script(train, config, library,
                                               suffixes, note):
    run = train(config, library, extra_hooks=DELTA_HOOK)
    entries = run.provenance['entries']
    inserted = _inserted(run, suffixes)
    for name in inserted:
        entry = entries[name]
        assert entry['kind'] == 'initializer', (name, entry)
        assert note in entry['notes'], (name, entry)
        if name.endswith(('lora_B.weight', 'up.weight', 'up.bias')):
            assert torch.count_nonzero(run.snapshots[0][name]) == 0, name
    loaded = [n for n, e in entries.items() if e['kind'] == 'checkpoint']
    assert len(loaded) > 30
    assert not any(n.endswith(suffixes) for n in loaded)
    assert all(note not in e['notes'] for n, e in entries.items()
               if n not in inserted)
    before, after = run.snapshots[0], run.finals[0]
    changed = [n for n in inserted if not torch.equal(before[n], after[n])]
    assert changed, 'no inserted tensor trained'
    frozen = 'freeze' in open(os.path.join(REPO, config)).read()
    if frozen:  # everything loaded stays bit-identical
        assert [n for n in loaded if not torch.equal(before[n], after[n])] \
            == []
    assert 'Iter(train) [4/4]' in run.log and ' - ERROR - ' not in run.log


@pytest.mark.parametrize('config, library, suffixes, note', CASES, ids=IDS)
def test_inserted_model_preserves_the_function(tiny_dir, config, library,
                                               suffixes, note):
    """The tool builds both configs, initializes them through their
    init_cfg and compares the backbone outputs on a seeded input."""
    plain = os.path.join(tiny_dir, f'{os.path.basename(config)}_plain.py')
    with open(plain, 'w') as f:
        f.write(f'_base_ = {os.path.join(REPO, config)!r}\n'
                'model = dict(insert=[])\n')
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, 'tools',
                                      'check_function_preserving.py'),
         os.path.join(REPO, config), '--reference', plain, '--atol', '0'],
        cwd=tiny_dir, env=subprocess_env(), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'function preserved: max 0.000e+00' in proc.stdout


@pytest.mark.parametrize('config, library', [c[:2] for c in CASES[:2]],
                         ids=IDS[:2])
def test_base_plus_delta_reproduces_the_trained_model(train, tiny_dir,
                                                      config, library):
    """The run's delta (DeltaCheckpointHook) holds what trained and the
    config's insert; Pretrained(checkpoint=[stock checkpoint, delta]) on a
    freshly built inserted model gives the trained weights bit for bit."""
    run = train(config, library, extra_hooks=DELTA_HOOK)
    delta = os.path.join(run.work_dir, 'delta_iter_4.pth')
    saved, _ = read_checkpoint(delta)
    cfg = Config.fromfile(os.path.join(REPO, config))
    assert saved['meta']['insert'] == [dict(e) for e in cfg.model.insert]
    trainable = [n for n, e in run.provenance['entries'].items()
                 if e['kind'] != 'checkpoint']
    assert set(trainable) <= set(saved['state_dict'])
    assert os.path.getsize(delta) < os.path.getsize(
        os.path.join(run.work_dir, 'iter_4.pth')) / 2
    base = os.path.join(tiny_dir, 'checkpoints', STOCK[config])
    assert_stack_rebuilds(cfg.model, [base, delta], library, run.finals[0])


def test_insert_two_ranks(train):
    """torchrun, 2 ranks, CPU DDP: LoRA inserted on both ranks alike, the
    loaded part frozen, the branches trained identically."""
    config, library, suffixes, note = CASES[0]
    run = train(config, library, nproc=2, extra_hooks=DELTA_HOOK,
                find_unused=True)
    for key, value in run.finals[0].items():
        assert torch.equal(value, run.finals[1][key]), key
    inserted = _inserted(run, suffixes)
    assert any(not torch.equal(run.snapshots[0][n], run.finals[0][n])
               for n in inserted)
    assert note in run.provenance['entries'][inserted[0]]['notes']
    assert os.path.exists(os.path.join(run.work_dir, 'delta_iter_4.pth'))


def test_init_detector_builds_the_inserted_model(train, tiny_dir):
    """mmdet's init_detector on the config with insert and the trained
    Runner checkpoint: the LoRA tensors load, the branches run."""
    from mmdet.apis import inference_detector, init_detector  # mmdet only
    config, library = CASES[0][:2]
    run = train(config, library, extra_hooks=DELTA_HOOK)
    trained = os.path.join(run.work_dir, 'iter_4.pth')
    model = init_detector(os.path.join(REPO, config), trained, device='cpu')
    state = model.state_dict()
    assert any('.lora_B.' in k for k in state)
    for key, value in read_checkpoint(trained)[0]['state_dict'].items():
        assert torch.equal(state[key], value), key
    result = inference_detector(
        model, os.path.join(tiny_dir, 'data/tiny_coco/val/val_000.jpg'))
    assert torch.isfinite(result.pred_instances.scores).all()
