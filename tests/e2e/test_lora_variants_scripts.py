"""LoRA's variants and insert sets as users run them: the examples
configs/mmpretrain/vit_rslora_tiny.py, convnext_lora_dwconv_tiny.py and
vit_lora_sets_tiny.py trained by mmpretrain's own, unchanged
``tools/train.py`` on the generated tiny classification set, from the stock
checkpoints (tools/make_tiny_data.py):

* rsLoRA (scale alpha / sqrt(rank)) and LoRA on ConvNeXt's depthwise convs
  (grouped: rank a multiple of groups): the ledger names the entries, the
  loaded backbone stays as loaded, the branches and the head train;
  ``mmext-merge`` folds the rsLoRA run's checkpoint and proves it, and
  refuses the grouped branch (it mixes channels across groups), naming
  the conv;
* two named sets with ``DeltaCheckpointHook(per_set=True)``: one delta per
  set and one for the head, each holding only its tensors; the base plus
  all of them rebuilds the trained model bit for bit, the base plus the
  head and one set loads that set (the other gets its declared init).
"""
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, assert_stack_rebuilds, checkpoint_state
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS
from test_dora_ssf_scripts import check_trained, run

pytestmark = pytest.mark.e2e

RSLORA = 'configs/mmpretrain/vit_rslora_tiny.py'
DWCONV = 'configs/mmpretrain/convnext_lora_dwconv_tiny.py'
SETS = 'configs/mmpretrain/vit_lora_sets_tiny.py'
PER_SET = ("dict(type='DeltaCheckpointHook', interval=-1, by_epoch=False, "
           'per_set=True), ')


@pytest.fixture(scope='module')
def cls_tiny(tmp_path_factory) -> str:
    """The tiny classification set and the stock ViT and ConvNeXt
    checkpoints, in the e2e tests' ``<basetemp>/tiny``."""
    path = tmp_path_factory.getbasetemp() / 'tiny'
    path.mkdir(exist_ok=True)
    script = os.path.join(REPO, 'tools', 'make_tiny_data.py')
    for only in (['cls'], ['ckpt', '--checkpoint', 'vit_stock_tiny.pth'],
                 ['ckpt', '--checkpoint', 'convnext_stock_tiny.pth']):
        subprocess.run([sys.executable, script, '--out-dir', str(path),
                        '--only', *only], check=True, capture_output=True)
    return str(path)


def test_rslora_trains_and_merges(cls_tiny):
    result = run(cls_tiny, RSLORA)
    assert ('backbone.layers.{0..3}.attn.qkv.lora_A.weight <- Kaiming'
            in result['log'])
    assert ('inserted by LoRA(rank=4, alpha=8, use_rslora=True) from '
            'insert[0]') in result['log']
    check_trained(result, cls_tiny, '.lora_')
    assert ('folded 4 LoRA branches of insert[0] LoRA(rank=4, alpha=8, '
            'use_rslora=True) into the weights of '
            'backbone.layers.{0..3}.attn.qkv') in result['merge']


def test_lora_on_depthwise_convs_trains(cls_tiny):
    result = run(cls_tiny, DWCONV, expect=2)
    before, after = result['before'], result['after']
    for stage, rank in ((0, 16), (1, 32)):
        conv = f'backbone.stages.{stage}.0.depthwise_conv'
        channels = before[f'{conv}.weight'].shape[0]
        assert before[f'{conv}.lora_A.weight'].shape == (rank, channels, 7,
                                                         7)
        assert before[f'{conv}.lora_B.weight'].shape == (channels,
                                                         rank // channels,
                                                         1, 1)
    base = checkpoint_state(os.path.join(cls_tiny, 'checkpoints',
                                         'convnext_stock_tiny.pth'))
    loaded = [k for k in base if k.startswith('backbone.')]
    assert loaded and all(torch.equal(before[k], base[k]) and
                          torch.equal(after[k], base[k]) for k in loaded)
    trained = [k for k in before if '.lora_' in k or k.startswith('head.')]
    assert len(trained) == 6
    assert [k for k in trained if torch.equal(before[k], after[k])] == []
    assert "insert[0] LoRA(rank=16): LoRA: 'backbone.stages.0.0." \
        "depthwise_conv' (Conv2d)" in result['merge']


def test_insert_sets_give_one_delta_each(train, cls_tiny):
    run_ = train(SETS, 'mmpretrain', extra_hooks=PER_SET)
    files = {key: os.path.join(run_.work_dir, f'delta_iter_4{suffix}.pth')
             for key, suffix in (('rest', ''), ('attn', '.attn'),
                                 ('mlp', '.mlp'))}
    held = {key: checkpoint_state(path) for key, path in files.items()}
    assert sorted(held['rest']) == ['head.layers.head.bias',
                                    'head.layers.head.weight']
    assert all('.attn.qkv.lora_' in k for k in held['attn'])
    assert all('.ffn.layers.1.lora_' in k for k in held['mlp'])
    assert len(held['attn']) == len(held['mlp']) == 8
    assert "tensors that train of set 'attn'" in run_.log
    final = run_.finals[0]
    cfg = Config.fromfile(os.path.join(REPO, SETS)).model
    base = os.path.join(cls_tiny, 'checkpoints', 'vit_stock_tiny.pth')
    stack = [base, files['rest'], files['mlp'], files['attn']]
    assert_stack_rebuilds(cfg, stack, 'mmpretrain', final)
    cfg.init_cfg = dict(type='Pretrained', checkpoint=stack[:2] + stack[3:])
    cfg.backbone.init_cfg = None
    init_default_scope('mmpretrain')
    one = MODELS.build(cfg)
    one.init_weights()
    state = one.state_dict()
    for key in list(held['attn']) + list(held['rest']):
        assert torch.equal(state[key], final[key]), key
    for key in held['mlp']:
        if '.lora_B.' in key:  # 'mlp' not loaded: its declared init
            assert not state[key].any() and final[key].any(), key
