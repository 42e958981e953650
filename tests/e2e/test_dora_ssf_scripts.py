"""The DoRA and SSF examples (configs/mmpretrain/vit_dora_tiny.py,
vit_ssf_tiny.py) trained by mmpretrain's own, unchanged ``tools/train.py``
for 2 iterations on the generated tiny classification set, from the stock
ViT checkpoint (tools/make_tiny_data.py):

* the initialization report names the new tensors and their declared
  inits; at ``before_train`` a DoRA magnitude is the norm of the loaded qkv
  weight, SSF's scale and shift the identity; after training they changed,
  the loaded tensors did not;
* ``tools/merge_inserted.py`` (``mmext-merge``) folds the run's last
  checkpoint into plain weights and proves it through the whole model.
"""
import os
import re
import subprocess
import sys
from typing import Dict

import pytest
import torch
from conftest import REPO, checkpoint_state, subprocess_env, train_command

pytestmark = pytest.mark.e2e

DORA = 'configs/mmpretrain/vit_dora_tiny.py'
SSF = 'configs/mmpretrain/vit_ssf_tiny.py'
BASE = 'checkpoints/vit_stock_tiny.pth'
PROVEN = re.compile(r'^merge proven: max (\S+) \(atol 1e-05\)', re.M)


@pytest.fixture(scope='module')
def vit_tiny(tmp_path_factory) -> str:
    """The tiny classification set and the stock ViT checkpoint, in the
    e2e tests' ``<basetemp>/tiny`` (tools/make_tiny_data.py only completes
    what is missing there)."""
    path = tmp_path_factory.getbasetemp() / 'tiny'
    path.mkdir(exist_ok=True)
    script = os.path.join(REPO, 'tools', 'make_tiny_data.py')
    for only in (['cls'], ['ckpt', '--checkpoint', 'vit_stock_tiny.pth']):
        subprocess.run([sys.executable, script, '--out-dir', str(path),
                        '--only', *only], check=True, capture_output=True)
    return str(path)


def run(tiny: str, config: str, expect: int = 0) -> Dict:
    """Train ``config`` 2 iterations; then merge its ``iter_2.pth``
    (``mmext-merge`` must exit with ``expect``)."""
    name = os.path.splitext(os.path.basename(config))[0] + '_2it'
    cmd, _, work_dir = train_command(tiny, config, 'mmpretrain', name)
    cmd += ['--cfg-options', 'train_cfg.max_iters=2',
            'default_hooks.checkpoint.interval=2']
    proc = subprocess.run(cmd, cwd=tiny, env=subprocess_env(), text=True,
                          capture_output=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    log = proc.stdout + proc.stderr
    assert 'Iter(train) [2/2]' in log and ' - ERROR - ' not in log
    merged = os.path.join(work_dir, 'merged.pth')
    merge = subprocess.run(
        [sys.executable, os.path.join(REPO, 'tools', 'merge_inserted.py'),
         os.path.join(REPO, config), os.path.join(work_dir, 'iter_2.pth'),
         '--out', merged, '--module', 'tensor',
         '--input-shape', '2', '3', '32', '32'],
        cwd=tiny, env=subprocess_env(), text=True, capture_output=True)
    assert merge.returncode == expect, \
        merge.stdout[-3000:] + merge.stderr[-3000:]
    states = {stem: torch.load(os.path.join(work_dir, f'{stem}_rank0.pth'))
              for stem in ('snapshot', 'final')}
    return dict(log=log, merge=merge.stdout + merge.stderr, merged=merged,
                before=states['snapshot'], after=states['final'])


def check_trained(result: Dict, tiny: str, new: str) -> None:
    """The loaded backbone unchanged, the new tensors (names containing
    ``new``) and the head changed by training; the merge proven."""
    base = checkpoint_state(os.path.join(tiny, BASE))
    before, after = result['before'], result['after']
    loaded = [k for k in base if k.startswith('backbone.')]
    assert loaded and all(torch.equal(before[k], base[k]) for k in loaded)
    assert [k for k in loaded if not torch.equal(before[k], after[k])] == []
    trained = [k for k in before if new in k or k.startswith('head.')]
    assert [k for k in trained if torch.equal(before[k], after[k])] == []
    assert float(PROVEN.search(result['merge']).group(1)) <= 1e-5
    merged = torch.load(result['merged'], weights_only=True)['state_dict']
    assert not [k for k in merged if new in k]


def test_vit_dora_trains_and_merges(vit_tiny):
    result = run(vit_tiny, DORA)
    log = result['log']
    assert ('  backbone.layers.{0..3}.attn.qkv.lora_magnitude_vector.weight '
            '<- DoRAMagnitude from backbone.layers.N.attn.qkv.'
            'lora_magnitude_vector (the norm of the loaded weight + s*BA; '
            'inserted by DoRA(rank=4, alpha=8) from insert[0])') in log
    assert ('12 tensors: backbone.layers.{0..3}.attn.qkv.{lora_A,lora_B,'
            'lora_magnitude_vector}.weight') in log
    base = checkpoint_state(os.path.join(vit_tiny, BASE))
    for i in range(4):
        qkv = f'backbone.layers.{i}.attn.qkv'
        assert torch.equal(result['before'][f'{qkv}.lora_magnitude_vector.'
                                            'weight'],
                           torch.linalg.norm(base[f'{qkv}.weight'], dim=1))
    check_trained(result, vit_tiny, '.lora_')
    assert ('folded 4 DoRA branches of insert[0] DoRA(rank=4, alpha=8) into '
            'the weights of backbone.layers.{0..3}.attn.qkv') in \
        result['merge']


def test_vit_ssf_trains_and_merges(vit_tiny):
    result = run(vit_tiny, SSF)
    log = result['log']
    assert ('  backbone.layers.{0..3}.attn.qkv.ssf.{scale,shift} <- '
            'ScaleShift(std=0.0) from backbone.layers.N.attn.qkv.ssf '
            '(inserted by SSF() from insert[0])') in log
    before = result['before']
    scales = [k for k in before if k.endswith('.ssf.scale')]
    assert len(scales) == 26
    for name in scales:
        assert torch.equal(before[name], torch.ones_like(before[name]))
        shift = name[:-len('scale')] + 'shift'
        assert torch.equal(before[shift], torch.zeros_like(before[shift]))
    check_trained(result, vit_tiny, '.ssf.')
    assert 'folded 26 SSF branches of insert[0] SSF() into the weights of ' \
        'backbone.patch_embed.projection' in result['merge']
