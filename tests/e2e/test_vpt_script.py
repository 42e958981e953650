"""``configs/mmpretrain/vit_vpt_tiny.py`` (VPT-deep inserted from the
config into mmpretrain's own ViT) trained 2 iterations by mmpretrain's own,
unchanged ``tools/train.py`` on the generated tiny classification set,
from the checkpoint a stock Runner run of ``vit_stock_tiny.py`` wrote: the
backbone loads bit-exact and stays frozen, each block's prompts are new
with their declared init (named so in the init report), and only the
prompts and the new head change."""
import os

import pytest
import torch
from conftest import Run, checkpoint_state

from mmext_init.training.report import TRAINABLE_TITLE

pytestmark = pytest.mark.e2e

CONFIG = 'configs/mmpretrain/vit_vpt_tiny.py'
BASE = 'checkpoints/vit_stock_tiny.pth'
PROMPTS = [f'backbone.layers.{i}.vpt_prompt.tokens' for i in range(4)]
REPORT_LINE = (
    '  backbone.layers.{0..3}.vpt_prompt.tokens <- PromptUniform(fan_in=192) '
    'from backbone.layers.N.vpt_prompt (inserted by VPT(num_tokens=4, '
    'deep=True) from insert[0])')
GROUP_LINE = (
    '  group 0: lr=0.01 weight_decay=0.05 (inserted by VPT(num_tokens=4, '
    'deep=True) from insert[0]), 4 tensors: '
    'backbone.layers.{0..3}.vpt_prompt.tokens')


@pytest.fixture(scope='module')
def run(train) -> Run:
    return train(CONFIG, 'mmpretrain')


def test_the_report_names_the_prompts(run):
    assert 'Iter(train) [2/2]' in run.log and ' - ERROR - ' not in run.log
    assert run.log.count(TRAINABLE_TITLE + ' of ImageClassifier') == 1
    assert REPORT_LINE in run.log.splitlines()
    assert GROUP_LINE in run.log.splitlines()  # at 10x the base lr
    entries = run.provenance['entries']
    for name in PROMPTS:
        assert entries[name]['kind'] == 'initializer', entries[name]
        assert entries[name]['source'] == 'PromptUniform', entries[name]
        assert 'inserted by VPT(num_tokens=4, deep=True) from insert[0]' in \
            entries[name]['notes']
        bound = (6 / (3 * 8 * 8 + 32))**0.5  # the paper's Xavier bound
        assert run.snapshots[0][name].shape == (4, 32)
        assert 0 < run.snapshots[0][name].abs().max() <= bound


def test_backbone_loads_bit_exact_and_only_prompts_and_head_change(
        run, tiny_dir):
    base = checkpoint_state(os.path.join(tiny_dir, BASE))
    entries, before, after = run.provenance['entries'], run.snapshots[0], \
        run.finals[0]
    loaded = sorted(n for n, e in entries.items() if e['kind'] == 'checkpoint')
    assert loaded == sorted(k for k in base if k.startswith('backbone.'))
    for name in loaded:
        assert entries[name]['source'].endswith(BASE), entries[name]
        assert torch.equal(before[name], base[name]), name
    head = sorted(n for n in before if n.startswith('head.'))
    assert before['head.layers.head.weight'].shape == (4, 32)
    data = run.trainable
    assert sorted(data['frozen']) == loaded
    assert sorted(n for g in data['groups'] for n in g['names']) == sorted(
        PROMPTS + head)
    changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
    assert changed == sorted(PROMPTS + head)
