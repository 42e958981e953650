"""``tools/bench_train.py`` (``mmext-bench-train``) runs end to end on the
tiny model (one repeat): the table, the ratios and the targets, ``--json
-``; bad arguments exit 2 naming them; and what it compares is like with
like: on the benchmark's Swin-T and ResNet-50, ours and PEFT's LoRA select
the same targets, train the same number of elements and, given the same
A and B, compute the same outputs; the merged model equals ours."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from mmext_init.tools.bench import train as bench_train
from mmext_init.tools.bench import train_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = [sys.executable, os.path.join(ROOT, 'tools', 'bench_train.py')]


def test_bench_train_prints_the_table_ratios_and_json():
    out = subprocess.run(
        TOOL + ['--models', 'tiny', '--repeats', '1', '--steps', '2',
                '--warmup', '1', '--size', '64', '--json', '-'],
        check=True, capture_output=True, text=True, cwd=ROOT, timeout=900)
    text = out.stderr  # with --json -: the text on stderr
    assert '1 torch thread(s) per process' in text
    assert f'torch {torch.__version__}' in text
    for mode in train_models.MODES:
        assert re.search(rf'^tiny lora +{mode} +\d+\.\d{{3}} ', text,
                         re.M), mode
    assert re.search(r'^tiny lora +time ours/PEFT \d\.\d{3} (met|NOT met) '
                     r'+memory ours/PEFT \d\.\d{3} (met|NOT met).* time '
                     r'merged/stock \d\.\d{3} (met|NOT met)$', text, re.M)
    row = json.loads(out.stdout)['results']['tiny lora']
    assert len(row['ours']['runs']) == 1  # --repeats 1
    assert len(row['ours']['runs'][0]['steps']) == 2  # --steps 2
    assert row['ratios']['time_ours_over_peft'] == pytest.approx(
        row['ours']['seconds'] / row['peft']['seconds'])
    # LoRA trains its branches only; stock and merged are the same model
    assert row['ours']['trainable'] == row['peft']['trainable'] < \
        row['stock']['trainable'] == row['merged']['trainable']
    for mode in train_models.MODES:
        assert row[mode]['peak_mb'] >= row[mode]['base_mb'] > 0, mode


def test_a_bad_argument_exits_2_naming_it():
    out = subprocess.run(TOOL + ['--models', 'tiny', '--repeats', '0'],
                         capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 2
    assert 'mmext-bench-train: error: argument --repeats: 0 is not an ' \
        'integer >= 1' in out.stderr


def test_a_method_whose_type_is_not_registered_is_an_error(
        monkeypatch, capsys):
    monkeypatch.setitem(train_models.METHODS, 'dora', ('NoSuchDoRA', {}))
    assert bench_train.main(['--models', 'tiny', '--methods', 'dora']) == 2
    err = capsys.readouterr().err
    assert "mmext-bench-train: error: --methods dora: insert type " \
        "'NoSuchDoRA' is not registered in " \
        'mmext_init.inserting.INSERT_TYPES (registered: ' in err
    assert 'LoRA' in err.split('registered: ')[1]


def peft_key(key: str) -> str:
    """Ours' name of a PEFT state-dict key."""
    return key.replace('.base_layer.', '.').replace('.default.', '.')


def run_eval(model: torch.nn.Module, x: torch.Tensor) -> tuple:
    """The outputs of ``model`` in eval mode, in ``x``'s dtype (mmdet's
    Swin ``train()`` returns None: no chaining)."""
    model.to(x.dtype)
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize('method', ['lora', 'dora'])
@pytest.mark.parametrize('name', ['swin-t', 'resnet50'])
def test_ours_and_peft_compute_the_same_function(name, method):
    torch.manual_seed(0)
    ours = train_models.build(name, 'ours', method, 8, 16)
    peft = train_models.build(name, 'peft', method, 8, 16)
    targets = set(train_models.lora_targets(ours))
    assert len(targets) == dict(swin_t=24, resnet50=16)[name.replace(
        '-', '_')]  # every qkv and proj / every bottleneck's 3x3 conv2
    assert targets == {k.split('.lora_A.')[0] for k in peft.state_dict()
                       if '.lora_A.' in k}
    with torch.no_grad():  # as after training (ResNet's zero-init
        for value in ours.parameters():  # residual BNs too): all count
            value.add_(torch.randn_like(value), alpha=0.05)
    state = ours.state_dict()
    mapped = {k: state[peft_key(k)] for k in peft.state_dict()}
    assert len(mapped) == len(state)  # every tensor has its counterpart
    peft.load_state_dict(mapped, strict=True)
    trained = {m: sorted(peft_key(k) for k, p in m.named_parameters()
                         if p.requires_grad) for m in (ours, peft)}
    assert trained[ours] == trained[peft]
    assert {k.rsplit('.lora_', 1)[0] for k in trained[ours]} == targets
    kinds = {k.rsplit('.lora_', 1)[1] for k in trained[ours]}
    assert kinds == {'A.weight', 'B.weight'} | (
        {'magnitude_vector.weight'} if method == 'dora' else set())
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    outs = [run_eval(m, x) for m in (ours, peft)]
    assert len(outs[0]) == len(outs[1]) == 4
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    stock = train_models.build(name, 'stock', method, 8, 16)
    stock.load_state_dict({k: v for k, v in state.items()
                           if '.lora_' not in k})
    # the branch changes the function (so equality above is not vacuous)
    assert (run_eval(stock, x)[-1] - outs[0][-1]).abs().max() > 1e-6


def test_merged_is_ours_folded_into_a_plain_model():
    torch.manual_seed(0)
    merged = train_models.build('tiny', 'merged', 'lora', 8, 16)
    assert not [k for k in merged.state_dict() if 'lora_' in k]
    assert not any(m._forward_hooks for m in merged.modules())
    assert all(p.requires_grad for p in merged.parameters())
    torch.manual_seed(0)  # the same weights and B as the merged one's
    ours = train_models.build_stock(
        'tiny', [train_models.insert_entry('tiny', 'lora', 8, 16)])
    train_models.random_b(ours)
    stock = train_models.build_stock('tiny')
    x = torch.randn(2, 3, 64, 64)
    want, got, plain = (run_eval(m, x)[-1] for m in (ours, merged, stock))
    assert torch.allclose(got, want, rtol=0, atol=1e-5)
    assert (plain - want).abs().max() > 1e-3  # the fold moved the weights
