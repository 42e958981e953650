"""LoRA on the attention of mmseg's SegFormer, end to end:
``configs/mmseg/segformer_mit_lora_attn_tiny.py`` (LoRA on every MiT
attention's ``nn.MultiheadAttention``, q/k/v and out_proj) trained for 2
iterations by mmseg's own, unchanged ``tools/train.py``: the report names
the attention's LoRA tensors, they train while the loaded part (the
attention's own weights included) stays bit-identical, and ``mmext-merge``
folds the trained run into plain weights and proves the merge."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, checkpoint_state, subprocess_env

pytestmark = pytest.mark.e2e

CONFIG = 'configs/mmseg/segformer_mit_lora_attn_tiny.py'
ATTNS = [f'backbone.layers.{i}.1.0.attn.attn' for i in range(4)]
NAMES = ('lora_A.weight', 'lora_B.weight', 'out_proj.lora_A.weight',
         'out_proj.lora_B.weight')
NOTE = 'inserted by LoRA(rank=4, alpha=8) from insert[0]'


@pytest.fixture(scope='module')
def run(train):
    return train(CONFIG, 'mmseg')


def test_attention_lora_trains_through_the_stock_script(run):
    entries = run.provenance['entries']
    inserted = {f'{a}.{n}' for a in ATTNS for n in NAMES}
    assert {n for n in run.snapshots[0] if 'lora_' in n} == inserted
    for name in inserted:
        assert entries[name]['kind'] == 'initializer', name
        assert NOTE in entries[name]['notes'], name
    for part in ('attn.attn.lora_A.weight', 'attn.attn.out_proj.lora_B.weight'):
        assert f'backbone.layers.{{0..3}}.1.0.{part} <- ' in run.log, part
    before, after = run.snapshots[0], run.finals[0]
    for name in inserted:
        if 'lora_B' in name:
            assert torch.count_nonzero(before[name]) == 0, name
            assert torch.count_nonzero(after[name]) > 0, name
    loaded = [n for n, e in entries.items() if e['kind'] == 'checkpoint']
    assert f'{ATTNS[0]}.in_proj_weight' in loaded
    assert f'{ATTNS[0]}.out_proj.weight' in loaded
    assert [n for n in loaded if not torch.equal(before[n], after[n])] == []
    assert 'Iter(train) [2/2]' in run.log and ' - ERROR - ' not in run.log


def test_merge_of_the_trained_run_is_proven(run, tiny_dir):
    trained = os.path.join(run.work_dir, 'iter_2.pth')
    out = os.path.join(run.work_dir, 'merged_attn.pth')
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, 'tools', 'merge_inserted.py'),
         os.path.join(REPO, CONFIG), trained, '--out', out,
         '--json', os.path.join(run.work_dir, 'merge.json')],
        cwd=tiny_dir, env=subprocess_env(), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ('folded 4 LoRA branches of insert[0] LoRA(rank=4, alpha=8) '
            'into the weights of backbone.layers.{0..3}.1.0.attn.attn'
            ) in proc.stdout
    with open(os.path.join(run.work_dir, 'merge.json')) as f:
        result = json.load(f)
    assert result['proven'] and result['max_abs_difference'] <= 1e-5
    merged = torch.load(out, weights_only=True)['state_dict']
    state = checkpoint_state(trained)
    assert not [n for n in merged if 'lora_' in n]
    for attn in ATTNS:  # each weight changed by s B A once, in float64
        for weight, prefix in (('in_proj_weight', ''),
                               ('out_proj.weight', 'out_proj.')):
            a, b = (state[f'{attn}.{prefix}lora_{x}.weight'].double()
                    for x in 'AB')
            base = state[f'{attn}.{weight}']
            expected = (base.double() + 2.0 * (b @ a)).float()
            assert torch.equal(merged[f'{attn}.{weight}'], expected)
            assert not torch.equal(merged[f'{attn}.{weight}'], base)
