"""The mmpretrain fine-tuning examples (configs/mmpretrain/), trained by
mmpretrain's own, unchanged ``tools/train.py`` on the generated tiny
classification set, from the checkpoints a stock Runner run of
``*_stock_tiny.py`` wrote (tools/make_tiny_data.py):

* ``vit_lora_ft_tiny.py``: LoRA inserted from the config on every ``qkv``
  of mmpretrain's ViT, the loaded part frozen, a new 4-class head;
* ``convnext_layer_decay_tiny.py``: mmpretrain's ConvNeXt, layer decay
  from ``ProvenanceOptimWrapperConstructor`` over the loaded backbone;
* the ViT run's delta (``DeltaCheckpointHook``) on its base rebuilds the
  trained model bit for bit, and ``tools/merge_inserted.py`` folds it into
  a plain checkpoint that mmpretrain's own ``tools/test.py`` evaluates on
  the plain config with mmext_init blocked from importing, predicting what
  the trained LoRA model predicts.
"""
import ast
import os
import re
import subprocess
import sys
from typing import Dict, List

import mmengine
import pytest
import torch
from conftest import (REPO, Run, assert_stack_rebuilds, checkpoint_state,
                      library_script, subprocess_env)
from mmengine.config import Config
from test_insert_scripts import DELTA_HOOK
from test_merge_predictions import MISMATCH, PLUGIN, PROBE, SITECUSTOMIZE

from mmext_init import read_checkpoint
from mmext_init.training.report import TRAINABLE_TITLE

pytestmark = pytest.mark.e2e

LIBRARY = 'mmpretrain'
VIT_LORA = 'configs/mmpretrain/vit_lora_ft_tiny.py'
CONVNEXT = 'configs/mmpretrain/convnext_layer_decay_tiny.py'
BASE = {VIT_LORA: 'checkpoints/vit_stock_tiny.pth',
        CONVNEXT: 'checkpoints/convnext_stock_tiny.pth'}
LORA_NOTE = 'inserted by LoRA(rank=4, alpha=8) from insert[0]'
SCORE_ATOL = 1e-6  # softmax scores; float32 folding moves them by ~1e-8


def _started(run: Run) -> None:
    assert 'Iter(train) [4/4]' in run.log and ' - ERROR - ' not in run.log
    assert run.log.count(TRAINABLE_TITLE + ' of ImageClassifier') == 1


def _group_of(data: dict) -> Dict[str, dict]:
    return {n: g for g in data['groups'] for n in g['names']}


def _loaded_bit_exact(run: Run, config: str, tiny_dir: str) -> List[str]:
    """The ledger's checkpoint tensors: every ``backbone.`` tensor of the
    stock checkpoint, from that file, bit-identical at ``before_train``."""
    base = checkpoint_state(os.path.join(tiny_dir, BASE[config]))
    entries = run.provenance['entries']
    loaded = sorted(n for n, e in entries.items() if e['kind'] == 'checkpoint')
    assert loaded == sorted(k for k in base if k.startswith('backbone.'))
    for name in loaded:
        assert entries[name]['source'].endswith(BASE[config]), entries[name]
        assert entries[name]['key'] == name, entries[name]
        assert torch.equal(run.snapshots[0][name], base[name]), name
    return loaded


def test_vit_lora_fine_tuning(train, tiny_dir):
    """Loaded bit-exact and frozen; LoRA on every qkv (the names beside the
    target's own), new and declared-init (B zero), trained; the new head
    (4 classes where the checkpoint had 2) trained; nothing else; what
    trains at base lr x 10."""
    run = train(VIT_LORA, LIBRARY, extra_hooks=DELTA_HOOK)
    _started(run)
    loaded = _loaded_bit_exact(run, VIT_LORA, tiny_dir)
    entries, before, after = run.provenance['entries'], run.snapshots[0], \
        run.finals[0]
    lora = sorted(n for n in before if '.lora_' in n)
    assert lora == sorted(f'backbone.layers.{i}.attn.qkv.lora_{ab}.weight'
                          for i in range(4) for ab in 'AB')
    for name in lora:
        assert entries[name]['kind'] == 'initializer', entries[name]
        assert LORA_NOTE in entries[name]['notes']
        if '.lora_B.' in name:
            assert torch.count_nonzero(before[name]) == 0, name
    head = sorted(n for n in before if n.startswith('head.'))
    assert before['head.layers.head.weight'].shape == (4, 32)
    assert not set(head) & set(loaded)
    data = run.trainable
    assert sorted(data['frozen']) == loaded
    assert sorted(_group_of(data)) == sorted(lora + head)
    optim = Config.fromfile(os.path.join(REPO, VIT_LORA),
                            import_custom_modules=False).optim_wrapper
    rule, = optim.paramwise_cfg.rules  # select='new'
    assert all(g['lr'] == pytest.approx(optim.optimizer.lr * rule.lr_mult,
                                        rel=1e-12) for g in data['groups'])
    assert [n for n in loaded if not torch.equal(before[n], after[n])] == []
    assert [n for n in lora + head if torch.equal(before[n], after[n])] == []


CONVNEXT_BLOCKS = [  # the hand-computed order: depth = index + 1
    'downsample_layers.0', 'stages.0.0', 'downsample_layers.1', 'stages.1.0',
    'downsample_layers.2', 'stages.2.0', 'stages.2.1', 'downsample_layers.3',
    'stages.3.0']
NORM = re.compile(  # ConvNeXt's LayerNorm2d / LayerNorm layers
    r'^backbone\.(downsample_layers\.0\.1|downsample_layers\.[1-3]\.0|'
    r'stages\.\d\.\d\.norm|norm3)\.')
BLOCK = re.compile(r'^backbone\.((?:downsample_layers|stages)\.\d+(?:\.\d+)?)'
                   r'\.')


def _convnext_depth(name: str) -> int:
    """A ConvNeXt parameter's depth by the rule (module docstring of
    mmext_init.training.depth), from its name alone."""
    found = BLOCK.match(name)
    if found is None:  # the final norm, after every block
        assert name.startswith('backbone.norm3.'), name
        return len(CONVNEXT_BLOCKS) + 1
    block = found.group(1)
    if block.startswith('downsample_layers'):  # Sequential(conv, norm)
        block = '.'.join(block.split('.')[:2])
    return CONVNEXT_BLOCKS.index(block) + 1


def test_convnext_layer_decay(train, tiny_dir):
    """Every backbone tensor loaded bit-exact; the optimizer's lr of each
    one is base * 0.7 ** (N + 1 - depth) with the depths of the rule
    (stem downsample_layers.0 at 1, ..., norm3 at N + 1 = 10), norms
    without weight decay; the new head at base x 10, not decayed; all
    trained."""
    run = train(CONVNEXT, LIBRARY)
    _started(run)
    loaded = _loaded_bit_exact(run, CONVNEXT, tiny_dir)
    data = run.trainable
    assert data['frozen'] == []
    group_of = _group_of(data)
    cfg = Config.fromfile(os.path.join(REPO, CONVNEXT),
                          import_custom_modules=False).optim_wrapper
    base_lr, base_wd = cfg.optimizer.lr, cfg.optimizer.weight_decay
    rate = cfg.paramwise_cfg.layer_decay.rate
    top = len(CONVNEXT_BLOCKS) + 1
    params = [n for n in group_of if n.startswith('backbone.')]
    assert sorted(params) == [n for n in loaded if n in group_of]
    for name in params:
        depth = _convnext_depth(name)
        assert group_of[name]['depth'] == [depth], (name, group_of[name])
        assert group_of[name]['lr'] == pytest.approx(
            base_lr * rate**(top - depth), rel=1e-12), name
    depths = {_convnext_depth(n) for n in params}
    assert depths == set(range(1, top + 1))
    norms = [n for n in params if NORM.search(n)]
    assert len(norms) == 2 * (4 + 5 + 1)  # downsample, blocks, norm3
    for name in params:
        assert group_of[name]['weight_decay'] == (
            0 if name in norms else base_wd), name
    head = [n for n in group_of if n.startswith('head.')]
    assert sorted(head) == ['head.fc.bias', 'head.fc.weight']
    for name in head:
        assert group_of[name]['depth'] == [] and \
            group_of[name]['lr'] == pytest.approx(base_lr * 10, rel=1e-12)
    before, after = run.snapshots[0], run.finals[0]
    assert [n for n in group_of if torch.equal(before[n], after[n])] == []


@pytest.fixture(scope='module')
def merged(train, tiny_dir, tmp_path_factory) -> Dict:
    """The ViT LoRA run's delta merged on its base, and mmpretrain's
    tools/test.py on: the LoRA config + the run's ``iter_4.pth`` (plugin
    imported), the plain config + ``merged.pth`` and the plain config + the
    trained weights without their LoRA tensors (both with the plugin
    blocked)."""
    run = train(VIT_LORA, LIBRARY, extra_hooks=DELTA_HOOK)
    folder = str(tmp_path_factory.mktemp('mmpretrain_merge'))
    os.makedirs(os.path.join(folder, 'probe'))
    with open(os.path.join(folder, 'probe', 'sitecustomize.py'), 'w') as f:
        f.write(SITECUSTOMIZE.format(plugin=PLUGIN))
    delta = os.path.join(run.work_dir, 'delta_iter_4.pth')
    merged = os.path.join(folder, 'merged.pth')
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, 'tools', 'merge_inserted.py'),
         os.path.join(REPO, VIT_LORA), BASE[VIT_LORA], '--delta', delta,
         '--out', merged, '--module', 'tensor',
         '--input-shape', '2', '3', '32', '32'],
        cwd=tiny_dir, env=subprocess_env(), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained = os.path.join(run.work_dir, 'iter_4.pth')
    unmerged = os.path.join(folder, 'unmerged.pth')
    torch.save({'state_dict': {
        k: v for k, v in checkpoint_state(trained).items()
        if '.lora_' not in k}}, unmerged)
    cfg = Config.fromfile(os.path.join(REPO, VIT_LORA),
                          import_custom_modules=False)
    cfg.model.pop('insert')
    cfg.pop('custom_imports')
    plain = os.path.join(folder, 'plain.py')
    cfg.dump(plain)
    results, outputs = {}, {}
    for name, config, checkpoint in (
            ('inserted', os.path.join(REPO, VIT_LORA), trained),
            ('merged', plain, merged), ('unmerged', plain, unmerged)):
        out = os.path.join(folder, f'{name}.pkl')
        cmd = [sys.executable, library_script(LIBRARY, 'test'), config,
               checkpoint, '--work-dir', os.path.join(folder, name),
               '--out', out, '--out-item', 'pred']
        env = subprocess_env()
        env['PYTHONPATH'] = os.pathsep.join(
            [os.path.join(folder, 'probe'), env['PYTHONPATH']])
        env.pop('MMEXT_BLOCK_PLUGIN', None)
        if name != 'inserted':
            env['MMEXT_BLOCK_PLUGIN'] = '1'
        test = subprocess.run(cmd, cwd=tiny_dir, env=env, text=True,
                              capture_output=True)
        outputs[name] = test.stdout + test.stderr
        assert test.returncode == 0, ' '.join(cmd) + outputs[name][-5000:]
        results[name] = mmengine.load(out)
    with open(plain) as f:
        plain_text = f.read()
    return dict(run=run, delta=delta, merged=merged, merge_log=proc.stdout,
                plain_text=plain_text, results=results, outputs=outputs)


def test_base_plus_delta_is_the_trained_model(merged, tiny_dir):
    """The delta holds what trained (LoRA, head) and the config's insert;
    ``Pretrained(checkpoint=[stock checkpoint, delta])`` on a freshly built
    inserted model gives the trained weights bit for bit."""
    run = merged['run']
    saved, _ = read_checkpoint(merged['delta'])
    cfg = Config.fromfile(os.path.join(REPO, VIT_LORA))
    assert saved['meta']['insert'] == [dict(e) for e in cfg.model.insert]
    assert sorted(saved['state_dict']) == sorted(
        _group_of(run.trainable))
    assert_stack_rebuilds(
        cfg.model, [os.path.join(tiny_dir, BASE[VIT_LORA]), merged['delta']],
        LIBRARY, run.finals[0])


def test_plain_test_runs_without_the_plugin(merged):
    """The merged file has no LoRA key; the plain runs neither imported nor
    tried to import mmext_init (the inserted run did: the probe works),
    and each checkpoint loaded with no missing or unexpected key."""
    assert 'merge proven' in merged['merge_log']
    state = torch.load(merged['merged'], weights_only=True)
    assert state['meta']['insert'] == []
    assert not [k for k in state['state_dict'] if 'lora' in k]
    assert 'mmext' not in merged['plain_text']
    for name, output in merged['outputs'].items():
        probes = PROBE.findall(output)
        assert len(probes) == 1, (name, output[-3000:])
        loaded, attempts = map(ast.literal_eval, probes[0])
        if name == 'inserted':
            assert 'mmext_init' in loaded
        else:
            assert (loaded, attempts) == ([], []), name
        assert MISMATCH not in output, (name, output[-5000:])


def _scores(results: list) -> torch.Tensor:
    return torch.stack([r['pred_score'] for r in results])


def test_merged_predicts_as_the_trained_lora_model(merged):
    """Same images in the same order; softmax scores within SCORE_ATOL and
    the same labels; without the LoRA tensors the scores move by far more
    (so the comparison can fail)."""
    results = merged['results']
    paths = [[r['img_path'] for r in results[n]] for n in results]
    assert paths[0] == paths[1] == paths[2] and len(paths[0]) == 8
    inserted, merged_, unmerged = (_scores(results[n]) for n in
                                   ('inserted', 'merged', 'unmerged'))
    largest = (inserted - merged_).abs().max().item()
    lora_effect = (inserted - unmerged).abs().max().item()
    print(f'\nmmpretrain ViT LoRA: inserted vs merged {largest:.3e}, '
          f'vs without LoRA {lora_effect:.3e}')
    assert largest <= SCORE_ATOL
    labels = [[r['pred_label'].tolist() for r in results[n]]
              for n in ('inserted', 'merged')]
    assert labels[0] == labels[1]
    assert lora_effect > 100 * SCORE_ATOL
