"""LoRA on ``nn.MultiheadAttention`` (its packed q/k/v ``in_proj_weight``
and its ``out_proj``), from the config, on torch's attention and inside
mmseg's MiT (``EfficientMultiheadAttention`` -> mmcv's
``MultiheadAttention`` -> ``attn.attn``): PEFT's outputs bit for bit and
its tensors one to one, the base parameters never written, gradients where
they belong, copies and pickles, a deferred build, the merge proven
against the unmerged forward, and ``mmext-check`` at step 0."""
import copy
import os
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.logging import MMLogger
from mmseg.models.backbones import MixVisionTransformer
from mmseg.registry import MODELS as MMSEG_MODELS
from peft import LoraConfig, inject_adapter_in_model
from test_lora_peft import max_difference, outputs, peft_to_ours, trained

from mmext_init import deferred
from mmext_init.errors import InitConfigError
from mmext_init.inserting import LoRA, insert_modules, lora_delta
from mmext_init.tools import check_function_preserving as check_tool

MMLogger.get_current_instance()  # its stdout: not a capsys stream

MIT_ARGS = dict(in_channels=3, embed_dims=8, num_stages=2, num_layers=[1, 2],
                num_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
                sr_ratios=[2, 1], out_indices=(0, 1))
MIT_MHA = r'.*attn\.attn'
MIT_PATHS = ['layers.0.1.0.attn.attn', 'layers.1.1.0.attn.attn',
             'layers.1.1.1.attn.attn']
NAMES = ('lora_A.weight', 'lora_B.weight', 'out_proj.lora_A.weight',
         'out_proj.lora_B.weight')


class Attention(nn.Module):
    """Self- or cross-attention through an ``nn.MultiheadAttention``."""

    def __init__(self, batch_first: bool, **kwargs) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first,
                                          **kwargs)

    def forward(self, x, memory=None, **kwargs):
        memory = x if memory is None else memory
        return self.attn(x, memory, memory, **kwargs)


def attention_pair(plain: nn.Module, targets: str, rank: int = 4):
    """Ours and PEFT's LoRA on copies of ``plain``, ours trained, PEFT's
    loaded from ours by name (strict)."""
    ours, theirs = copy.deepcopy(plain), copy.deepcopy(plain)
    insert_modules(ours, [dict(type='LoRA', targets=targets, rank=rank,
                               alpha=2 * rank)])
    ours.load_state_dict(trained(ours.state_dict(), 5), strict=True)
    inject_adapter_in_model(
        LoraConfig(target_modules=targets, r=rank, lora_alpha=2 * rank),
        theirs)
    mine = ours.state_dict()
    assert {peft_to_ours(k) for k in theirs.state_dict()} == set(mine)
    theirs.load_state_dict({k: mine[peft_to_ours(k)]
                            for k in theirs.state_dict()}, strict=True)
    return ours, theirs


def sequence(batch_first: bool, length: int = 6) -> torch.Tensor:
    shape = (2, length, 16) if batch_first else (length, 2, 16)
    return torch.randn(shape, generator=torch.Generator().manual_seed(7))


CALLS = {
    'plain': {},
    'no_weights': dict(need_weights=False),
    'per_head_weights': dict(average_attn_weights=False),
    'padding_mask': dict(key_padding_mask=torch.tensor(
        [[False] * 5 + [True], [False] * 3 + [True] * 3])),
    'attn_mask': dict(attn_mask=torch.triu(torch.ones(6, 6, dtype=torch.bool),
                                           1)),
}


@pytest.mark.parametrize('call', sorted(CALLS))
@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_torch_attention_equals_peft(batch_first, call, mode):
    """Both outputs (attention and its weights) bit for bit, in eval mode
    without grad (torch's fast path where it applies) and in training
    mode with grad."""
    plain = Attention(batch_first)
    ours, theirs = attention_pair(plain, 'attn')
    x = sequence(batch_first)
    results = []
    for model in (ours, theirs, plain):
        model.train(mode == 'train')
        with torch.set_grad_enabled(mode == 'train'):
            results.append([t for t in model(x, **CALLS[call])
                            if t is not None])
    assert max_difference(results[0], results[1]) == 0.0
    assert max_difference(results[0], results[2]) > 1e-3


def test_cross_attention_and_bias_kv_equal_peft():
    plain = Attention(True, add_bias_kv=True)
    ours, theirs = attention_pair(plain, 'attn')
    x, memory = sequence(True), sequence(True, 9)
    assert max_difference(outputs(ours, x), outputs(theirs, x)) == 0.0
    results = []
    for model in (ours, theirs, plain):
        with torch.no_grad():
            results.append(list(model.eval()(x, memory)))
    assert max_difference(results[0], results[1]) == 0.0
    assert max_difference(results[0], results[2]) > 1e-3


def test_mit_attention_equals_peft_and_loads_its_state_dict():
    plain = MixVisionTransformer(**MIT_ARGS)
    plain.init_weights()
    ours, theirs = attention_pair(plain, MIT_MHA)
    assert {n for n in ours.state_dict() if 'lora_' in n} == {
        f'{p}.{n}' for p in MIT_PATHS for n in NAMES}
    mha = ours.get_submodule(MIT_PATHS[1])
    assert mha.lora_A.weight.shape == (4, 16)
    assert mha.lora_B.weight.shape == (48, 4)
    assert mha.out_proj.lora_B.weight.shape == (16, 4)
    x = torch.randn(2, 3, 32, 32)
    out = outputs(ours, x)
    assert max_difference(out, outputs(theirs, x)) == 0.0
    assert max_difference(out, outputs(plain, x)) > 1e-3
    other = trained(theirs.state_dict(), 6)  # PEFT's -> ours, strict
    theirs.load_state_dict(other, strict=True)
    ours.load_state_dict({peft_to_ours(k): v for k, v in other.items()},
                         strict=True)
    assert max_difference(outputs(ours, x), outputs(theirs, x)) == 0.0


def test_base_stays_as_loaded_and_gradients_reach_a_and_b_only():
    model = Attention(True)
    insert_modules(model, [dict(type='LoRA', targets='attn', rank=4)])
    mha = model.attn
    base = {n: p for n, p in model.named_parameters() if 'lora_' not in n}
    assert set(base) == {'attn.in_proj_weight', 'attn.in_proj_bias',
                         'attn.out_proj.weight', 'attn.out_proj.bias'}
    values = {n: p.detach().clone() for n, p in base.items()}
    for p in base.values():
        p.requires_grad_(False)
    lora = [p for n, p in model.named_parameters() if 'lora_' in n]
    start = [p.detach().clone() for p in lora]
    optimizer = torch.optim.SGD(lora, lr=0.5)
    model.train()
    before = outputs(model, sequence(True))
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(sequence(True))[0].square().sum().backward()
        assert all(p.grad is not None for p in lora)  # A's: 0 while B = 0
        assert all(p.grad is None for p in base.values())
        optimizer.step()
    assert not any(torch.equal(p, p0) for p, p0 in zip(lora, start))
    assert dict(model.named_parameters())['attn.in_proj_weight'] is \
        base['attn.in_proj_weight']
    assert type(mha.in_proj_weight) is nn.Parameter
    for name, value in values.items():
        assert torch.equal(base[name], value), name
    assert max_difference(outputs(model, sequence(True)), before) > 1e-3
    mha.in_proj_weight.requires_grad_(True)  # unfrozen: the base trains
    model.train()
    model(sequence(True))[0].sum().backward()
    assert mha.in_proj_weight.grad.abs().sum() > 0


def test_deepcopy_and_pickle_use_their_own_branch():
    model = Attention(False)
    insert_modules(model, [dict(type='LoRA', targets='attn', rank=2)])
    plain_out = outputs(model, sequence(False))  # B = 0
    model.load_state_dict(trained(model.state_dict(), 8))
    out = outputs(model, sequence(False))
    twin = copy.deepcopy(model)
    assert max_difference(outputs(twin, sequence(False)), out) == 0.0
    again = pickle.loads(pickle.dumps(model))
    assert max_difference(outputs(again, sequence(False)), out) == 0.0
    nn.init.zeros_(twin.attn.lora_B.weight)
    nn.init.zeros_(twin.attn.out_proj.lora_B.weight)
    assert max_difference(outputs(twin, sequence(False)), plain_out) == 0.0
    assert max_difference(outputs(model, sequence(False)), out) == 0.0


@pytest.mark.parametrize('parts', [('in_proj', ), ('out_proj', ),
                                   ('in_proj', 'out_proj')])
def test_fold_matches_the_unmerged_forward_each_delta_once(parts):
    """The folded attention (float64) gives the unmerged outputs; its
    out_proj weight is W + delta (once: PEFT's double application of the
    out_proj delta, peft#3774, would be caught here)."""
    model = Attention(True).double()
    plain = copy.deepcopy(model)
    lora = LoRA(rank=4, alpha=8, mha_parts=parts)
    lora.insert(model.attn, 'attn')
    model.load_state_dict(trained(model.state_dict(), 9))
    folded = lora.fold(model.attn, 'attn')
    assert {k for k, v in folded.items() if v is None} == {
        n for n in NAMES if ('out_proj' in n) == (parts == ('out_proj', ))
        or len(parts) == 2}
    state = {f'attn.{k}': v for k, v in folded.items() if v is not None}
    assert set(state) == {'attn.in_proj_weight', 'attn.out_proj.weight'} & {
        f'attn.{p}_weight' if p == 'in_proj' else 'attn.out_proj.weight'
        for p in parts}
    merged = copy.deepcopy(plain)
    merged.load_state_dict({**plain.state_dict(), **state}, strict=True)
    x = sequence(True).double()
    for call in CALLS.values():
        unmerged = [t for t in model.eval()(x, **call) if t is not None]
        assert max_difference(
            [t for t in merged.eval()(x, **call) if t is not None],
            unmerged) < 1e-12
        assert max_difference(
            [t for t in plain.eval()(x, **call) if t is not None],
            unmerged) > 1e-3
    if 'out_proj' in parts:
        twice = plain.attn.out_proj.weight + 2 * lora_delta(
            model.attn.out_proj)
        assert not torch.allclose(twice, folded['out_proj.weight'])


def test_refusals_name_the_layer():
    model = nn.Sequential()
    model.add_module('cross', nn.MultiheadAttention(16, 2, kdim=8, vdim=8))
    with pytest.raises(InitConfigError, match=(
            r"insert\[0\] \(LoRA.*'cross' \(MultiheadAttention\) has "
            r'separate q/k/v weights \(kdim=8')):
        insert_modules(model, [dict(type='LoRA', targets='cross', rank=2)])
    mit = MixVisionTransformer(**MIT_ARGS)
    with pytest.raises(InitConfigError, match=(
            r"'layers\.0\.1\.0\.attn\.attn' \(MultiheadAttention\): LoRA on "
            r'an nn.MultiheadAttention .*dropout=0.1 must be 0')):
        insert_modules(mit, [dict(type='LoRA', targets=MIT_MHA, rank=2,
                                  dropout=0.1)])
    with pytest.raises(InitConfigError, match='mha_parts must name some of'):
        insert_modules(mit, [dict(type='LoRA', targets=MIT_MHA, rank=2,
                                  mha_parts=['qkv'])])
    assert not any(hasattr(m, 'lora_A') for m in mit.modules())
    attn = nn.MultiheadAttention(8, 2)
    LoRA(rank=2).insert(attn, 'attn')
    with pytest.raises(ValueError, match=r"'attn' \(MultiheadAttention\) "
                       'already has its own forward'):
        LoRA(rank=2, mha_parts='out_proj').check(attn, 'attn')


def test_deferred_build_with_pretrained_loads_then_runs(save_ckpt,
                                                        monkeypatch):
    """Built through the registry with a ``Pretrained`` init_cfg (the
    config path): inserting reads no pending value, the forward reads the
    loaded weights."""
    monkeypatch.setenv(deferred.ENV_VAR, '1')
    plain = MixVisionTransformer(**MIT_ARGS)
    plain.init_weights()
    path = save_ckpt(plain.state_dict())
    model = MMSEG_MODELS.build(dict(
        type='mmseg.MixVisionTransformer', **MIT_ARGS,
        init_cfg=ConfigDict(type='Pretrained', checkpoint=path)))
    mha = model.get_submodule(MIT_PATHS[0])
    assert deferred.is_pending(mha.in_proj_weight)
    insert_modules(model, [dict(type='LoRA', targets=MIT_MHA, rank=2)])
    assert deferred.is_pending(mha.in_proj_weight)
    model.init_weights()
    assert torch.equal(mha.in_proj_weight, plain.get_submodule(
        MIT_PATHS[0]).in_proj_weight)
    x = torch.randn(1, 3, 32, 32)
    assert max_difference(outputs(model, x), outputs(plain, x)) == 0.0


def test_deferred_weight_is_computed_when_the_forward_reads_it(monkeypatch):
    """No checkpoint: the pending ``in_proj_weight`` gets its constructor
    values on the LoRA forward's first read."""
    monkeypatch.setenv(deferred.ENV_VAR, '1')
    torch.manual_seed(11)
    reference = MixVisionTransformer(**MIT_ARGS)
    torch.manual_seed(11)
    model = MMSEG_MODELS.build(dict(type='mmseg.MixVisionTransformer', **MIT_ARGS))
    insert_modules(model, [dict(type='LoRA', targets=MIT_MHA, rank=2)])
    mha = model.get_submodule(MIT_PATHS[2])
    assert deferred.is_pending(mha.in_proj_weight)
    x = torch.randn(1, 3, 32, 32)
    assert max_difference(outputs(model, x), outputs(reference, x)) == 0.0
    assert not deferred.is_pending(mha.in_proj_weight)
    assert torch.equal(mha.in_proj_weight, reference.get_submodule(
        MIT_PATHS[2]).in_proj_weight)


def test_mmext_check_passes_at_step_zero(tmp_path, capsys):
    """``mmext-check``: the MiT with LoRA on every attention against the
    same config without it, both through their Pretrained init_cfg."""
    plain = MixVisionTransformer(**MIT_ARGS)
    plain.init_weights()
    path = str(tmp_path / 'mit.pth')
    torch.save({'state_dict': plain.state_dict()}, path)
    model = dict(type='MixVisionTransformer', **MIT_ARGS,
                 init_cfg=dict(type='Pretrained', checkpoint=path))
    configs = []
    for name, insert in (('inserted', [dict(type='LoRA', targets=MIT_MHA,
                                            rank=4, alpha=8)]),
                         ('reference', [])):
        config = tmp_path / f'{name}.py'
        config.write_text(
            "default_scope = 'mmseg'\ncustom_imports = dict(imports=["
            "'mmext_init'], allow_failed_imports=False)\n"
            f'model = {dict(model, insert=insert)!r}\n')
        configs.append(str(config))
    code = check_tool.main([configs[0], '--reference', configs[1],
                            '--input-shape', '1', '3',
                            '32', '32', '--atol', '0'])
    out, err = capsys.readouterr()
    assert code == 0, out[-2000:] + err[-2000:]
    assert 'function preserved: max 0.000e+00' in out
    assert os.path.exists(path)
