"""The parameter-efficient fine-tuning recipes of configs/mmpretrain/,
trained by mmpretrain's own, unchanged ``tools/train.py`` on the generated
tiny classification set, from the stock ViT checkpoint
(tools/make_tiny_data.py), for two iterations. The new head starts at zero
(``VisionTransformerClsHead``'s ``Constant`` init), so nothing before it
gets a gradient in the first step: a backbone bias or LoRA's B takes its
first AdamW step in the second, of exactly ``lr * ADAM_SECOND`` per element
(its sign aside: :func:`adam_second_step`), after two weight decays
``p * (1 - lr * wd) ** 2``; so each tensor's change shows its lr:

* ``vit_bitfit_tiny.py``: BitFit, one ``freeze`` entry; what trains is
  every bias of the backbone (LayerNorm's included) and the new head, at
  the base lr, and exactly that changed;
* ``vit_lora_plus_tiny.py``: LoRA+, one rule; B moves by the base lr x 16,
  A (B still zero in both forwards) only by its weight decay at the base
  lr; the report logs the LoRA entry's line and PEFT-style totals.
"""
import math
import os
import pytest
import torch
from conftest import REPO, Run
from mmengine.config import Config
from test_mmpretrain_scripts import _group_of

from mmext_init.training.report import TRAINABLE_TITLE

pytestmark = pytest.mark.e2e

LIBRARY = 'mmpretrain'
BITFIT = 'configs/mmpretrain/vit_bitfit_tiny.py'
LORA_PLUS = 'configs/mmpretrain/vit_lora_plus_tiny.py'
RATIO = 16.0  # the config's lr_mult of LoRA's B
LORA_ENTRY = 'insert[0] LoRA(rank=4, alpha=8)'


def adam_second_step(betas) -> float:
    """AdamW's step in units of lr when the first gradient was zero: bias
    corrections ``1 - b1 ** 2`` and ``1 - b2 ** 2`` of ``m = (1 - b1) g``
    and ``v = (1 - b2) g ** 2`` (``eps`` negligible)."""
    b1, b2 = betas
    return (1 - b1) / (1 - b1**2) * math.sqrt((1 - b2**2) / (1 - b2))


ADAM_SECOND = adam_second_step(torch.optim.AdamW([
    torch.zeros(1)]).defaults['betas'])  # the configs' AdamW: 0.744


def two_iterations(tiny_dir: str, config: str) -> str:
    """``config`` trained for two iterations (a config deriving from it)."""
    path = os.path.join(tiny_dir, 'two_iters_' + os.path.basename(config))
    with open(path, 'w') as f:
        f.write(f'_base_ = {os.path.join(REPO, config)!r}\n'
                'train_cfg = dict(max_iters=2)\n'
                'default_hooks = dict(checkpoint=dict(interval=2))\n')
    return path


def _run(train, tiny_dir: str, config: str) -> Run:
    run = train(two_iterations(tiny_dir, config), LIBRARY)
    assert 'Iter(train) [2/2]' in run.log and ' - ERROR - ' not in run.log
    assert run.log.count(TRAINABLE_TITLE + ' of ImageClassifier') == 1
    return run


def _optimizer(config: str) -> Config:
    return Config.fromfile(os.path.join(REPO, config),
                           import_custom_modules=False).optim_wrapper.optimizer


def _step(before: torch.Tensor, after: torch.Tensor, lr: float,
          wd: float) -> float:
    """The largest Adam step of a tensor in two iterations, the two weight
    decays taken out."""
    return (after - before * (1 - lr * wd)**2).abs().max().item()


def test_bitfit_trains_the_biases_and_the_head(train, tiny_dir):
    """Trainable: each ``.bias`` of the backbone (every LayerNorm's among
    them) and the new head, at the base lr; the rest frozen and unchanged
    bit for bit; each bias took one base-lr step."""
    run = _run(train, tiny_dir, BITFIT)
    before, after = run.snapshots[0], run.finals[0]
    entries = run.provenance['entries']
    loaded = {n for n, e in entries.items() if e['kind'] == 'checkpoint'}
    biases = {n for n in loaded if n.endswith('.bias')}
    head = {n for n in before if n.startswith('head.')}
    norms = {n[:-len('.bias')] for n in biases if '.ln' in n}
    assert len(norms) == 2 * 4 + 1  # ln1, ln2 of 4 layers, the final ln1
    assert head and not head & loaded
    data = run.trainable
    group_of = _group_of(data)
    assert set(group_of) == biases | head
    assert set(data['frozen']) == loaded - biases
    assert {f'{n}.weight' for n in norms} <= set(data['frozen'])
    optim = _optimizer(BITFIT)
    assert {g['lr'] for g in data['groups']} == {optim.lr}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == biases | head
    for name in sorted(biases):
        wd = group_of[name]['weight_decay']
        assert _step(before[name], after[name], optim.lr, wd) == \
            pytest.approx(optim.lr * ADAM_SECOND, rel=1e-3), name


def test_lora_plus_moves_b_at_the_ratio(train, tiny_dir):
    """B at lr x 16, A and the head at lr (the JSON's groups and the steps
    taken); the loaded part frozen and unchanged; the log's entry line and
    totals count what the snapshot holds."""
    run = _run(train, tiny_dir, LORA_PLUS)
    before, after = run.snapshots[0], run.finals[0]
    optim = _optimizer(LORA_PLUS)
    lr, wd = optim.lr, optim.weight_decay
    lora_a = sorted(n for n in before if '.lora_A.' in n)
    lora_b = sorted(n for n in before if '.lora_B.' in n)
    head = sorted(n for n in before if n.startswith('head.'))
    assert len(lora_a) == len(lora_b) == 4  # every qkv of the 4 layers
    data = run.trainable
    group_of = _group_of(data)
    assert sorted(group_of) == sorted(lora_a + lora_b + head)
    for name in lora_b:
        assert group_of[name]['lr'] == pytest.approx(lr * RATIO, rel=1e-12)
        assert torch.count_nonzero(before[name]) == 0, name
        assert _step(before[name], after[name], lr, wd) == \
            pytest.approx(lr * RATIO * ADAM_SECOND, rel=1e-3), name
    for name in lora_a:
        assert group_of[name]['lr'] == pytest.approx(lr, rel=1e-12)
        assert not torch.equal(before[name], after[name]), name
        assert torch.allclose(after[name], before[name] * (1 - lr * wd)**2,
                              rtol=1e-6, atol=0), name  # no gradient yet
    for name in head:
        assert group_of[name]['lr'] == pytest.approx(lr, rel=1e-12)
        assert not torch.equal(before[name], after[name]), name
    frozen = [n for n in before if n not in group_of]
    assert sorted(frozen) == sorted(data['frozen'])
    assert [n for n in frozen if not torch.equal(before[n], after[n])] == []
    lora = sum(before[n].numel() for n in lora_a + lora_b)
    trainable = lora + sum(before[n].numel() for n in head)
    total = sum(v.numel() for v in before.values())
    assert data['totals'] == dict(trainable=trainable, all=total)
    assert (f'{LORA_ENTRY}: 8 tensors, {lora:,d} params '
            f'({100 * lora / total:.4f}%), all train') in run.log
    assert (f'trainable params: {trainable:,d} || all params: {total:,d} || '
            f'trainable%: {100 * trainable / total:.4f}') in run.log
