"""``mmext-merge`` (mmext_init.tools.merge_inserted) on the tiny LoRA/adapter
configs: LoRA folded into Linear (Swin qkv/proj), Conv2d (MiT sr, Mix-FFN
1x1) and ConvModule (RetinaHead) weights, a plain checkpoint written and
proven, and loaded by stock mmdet/mmseg in a subprocess that never imports
mmext_init (real models, real files)."""
import copy
import os
import re
import subprocess
import sys
from typing import Dict, List, Tuple

import json

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.registry import MODELS

from mmext_init.hooks.delta_checkpoint import delta_checkpoint
from mmext_init.inserting import (INSERT_TYPES, InsertType, insert_modules,
                                 lora_delta)
from mmext_init.tools import check_function_preserving as cfp
from mmext_init.tools import merge_fold as fold
from mmext_init.tools import merge_inserted as tool

# MMEngine's logger keeps the sys.stdout of its creation: create it now,
# not inside a capsys test whose stream is closed afterwards.
MMLogger.get_current_instance()

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TOOL = os.path.join(REPO, 'tools', 'merge_inserted.py')  # the wrapper

SWIN = os.path.join(REPO, 'configs', 'mmdet', 'retinanet_swin_lora_tiny.py')
MIT = os.path.join(REPO, 'configs', 'mmseg', 'segformer_mit_lora_tiny.py')
R18_ADAPTERS = os.path.join(REPO, 'configs', 'mmdet',
                            'retinanet_r18_adapters_insert_tiny.py')
STOCK = ('retinanet_swin_stock_tiny.pth', 'segformer_mit_stock_tiny.pth',
         'retinanet_r18_stock_tiny.pth')
DATASET_META = {'classes': ('red', 'green'), 'palette': [(220, 20, 60)]}
PROVEN = re.compile(r'^merge proven: max (\S+) \(atol 1e-05\)', re.M)

# Builds the config's model without mmext_init (custom_imports skipped,
# model.insert dropped), loads the merged file strictly with weights_only
# and prints the largest difference from the inserted model's outputs.
STOCK_CHECK = '''
import sys, torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
config, out, ref = sys.argv[1:]
cfg = Config.fromfile(config, import_custom_modules=False)
init_default_scope(cfg.default_scope)
from {library}.registry import MODELS
model_cfg = cfg.model.to_dict()
model_cfg.pop('insert')
model = MODELS.build(model_cfg)
state = torch.load(out, map_location='cpu', weights_only=True)['state_dict']
print(model.load_state_dict(state, strict=True))
model.double()
model.eval()
ref = torch.load(ref, weights_only=True)
with torch.no_grad():
    outs = model.backbone(ref['x'])
assert len(outs) == len(ref['outs'])
print('MAX', max((a - b).abs().max().item()
                 for a, b in zip(outs, ref['outs'])))
print('PLUGIN', 'mmext_init' in sys.modules)
'''


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory) -> str:
    """The stock Runner checkpoints of the tiny configs (and their data),
    in the e2e tests' ``<basetemp>/tiny`` (tools/make_tiny_data.py only
    completes what is missing there)."""
    path = tmp_path_factory.getbasetemp() / 'tiny'
    path.mkdir(exist_ok=True)
    command = [sys.executable, os.path.join(REPO, 'tools',
                                            'make_tiny_data.py'),
               '--out-dir', str(path), '--only', 'ckpt']
    for name in STOCK:
        command += ['--checkpoint', name]
    subprocess.run(command, check=True, capture_output=True)
    return str(path)


@pytest.fixture
def in_tiny(tiny_dir, monkeypatch) -> str:
    """Run from the tiny directory: the configs' checkpoint paths."""
    monkeypatch.chdir(tiny_dir)
    return tiny_dir


def trained(config: str, pattern: str, seed: int = 1) -> nn.Module:
    """The model of ``config`` as configured (stock checkpoint loaded, new
    tensors initialized), eval mode, the tensors whose name contains
    ``pattern`` made random (as after training) and the only ones that
    train."""
    model, _ = cfp.build_initialized(Config.fromfile(config))
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if re.search(pattern, name):
                param.copy_(0.05 * torch.randn(param.shape,
                                               generator=generator))
                param.requires_grad_(True)
    return model


def reference(model: nn.Module, shape: Tuple[int, ...],
              path: str) -> List[torch.Tensor]:
    """Save the seeded input (the tool's, seed 0) and ``model``'s backbone
    outputs on it in float64 to ``path``; return the outputs."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    model.double()
    with torch.no_grad():
        outs = cfp.flatten(model.backbone(x.double()))
    torch.save({'x': x.double(), 'outs': outs}, path)
    model.float()
    return outs


def stock_max_difference(library: str, config: str, out: str, ref: str,
                         cwd: str) -> float:
    """Load ``out`` into ``config``'s plain model in a Python without
    mmext_init; the largest backbone output difference from ``ref``."""
    proc = subprocess.run(
        [sys.executable, '-c', STOCK_CHECK.format(library=library), config,
         out, ref], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '<All keys matched successfully>' in proc.stdout
    assert 'PLUGIN False' in proc.stdout
    return float(re.search(r'^MAX (\S+)$', proc.stdout, re.M).group(1))


def error_line(err: str) -> str:
    """The tool's own error line. Other lines may precede it: a logger built
    by an earlier test can still hold a stream pytest has since closed, and
    logging then prints its own traceback to stderr."""
    lines = [line for line in err.splitlines()
             if line.startswith('mmext-merge: error:')]
    assert len(lines) == 1, err
    return lines[0]


def folded_weight(model: nn.Module, target: str) -> torch.Tensor:
    """``target``'s weight plus its LoRA delta, in float64, as float32."""
    layer = copy.deepcopy(model.get_submodule(target)).double()
    weight = getattr(layer, 'conv', layer).weight  # a ConvModule's conv
    with torch.no_grad():
        return (weight + lora_delta(layer)).float()


def check_file(path: str, state: Dict[str, torch.Tensor]) -> Dict:
    """The merged file: plain, no lora tensor, the model's other tensors
    unchanged; returns it."""
    merged = torch.load(path, weights_only=True)
    assert set(merged) == {'state_dict', 'meta'}
    assert not [k for k in merged['state_dict'] if 'lora' in k]
    assert set(merged['state_dict']) == {k for k in state if 'lora' not in k}
    changed = [k for k, v in merged['state_dict'].items()
               if not torch.equal(v, state[k])]
    assert changed and all(k.endswith('.weight') for k in changed)
    return merged


@pytest.fixture(scope='module')
def swin(tiny_dir, tmp_path_factory) -> Dict[str, object]:
    """RetinaNet-Swin with LoRA: ``base`` (the model as loaded, B zero),
    ``delta`` (random A and B, DeltaCheckpointHook's format), the trained
    state and the reference outputs (``ref``)."""
    folder = tmp_path_factory.mktemp('merge_swin')
    cwd = os.getcwd()
    os.chdir(tiny_dir)
    try:
        model, _ = cfp.build_initialized(Config.fromfile(SWIN))
        base = str(folder / 'base.pth')
        torch.save({'state_dict': model.state_dict(),
                    'meta': {'dataset_meta': DATASET_META}}, base)
        model = trained(SWIN, r'\.lora_[AB]\.')
    finally:
        os.chdir(cwd)
    delta = str(folder / 'delta_iter_4.pth')
    torch.save(delta_checkpoint(model, at_iter=4), delta)
    ref = str(folder / 'ref.pth')
    reference(model, (1, 3, 128, 128), ref)
    return dict(base=base, delta=delta, ref=ref, model=model,
                state=model.state_dict(), folder=folder)


def test_swin_lora_merges_into_a_stock_checkpoint(swin, tiny_dir, tmp_path):
    """The CLI on base + delta: Linear LoRA folded, proven, and the file
    gives stock mmdet the inserted model's outputs."""
    out = str(tmp_path / 'merged.pth')
    proc = subprocess.run(
        [sys.executable, TOOL, SWIN, swin['base'], '--delta', swin['delta'],
         '--out', out], cwd=tiny_dir, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ('folded 8 LoRA branches of insert[0] LoRA(rank=4, alpha=8) into '
            'the weights of backbone.stages.{0..3}.blocks.0.attn.w_msa.'
            '{qkv,proj}') in proc.stdout
    assert float(PROVEN.search(proc.stdout).group(1)) <= 1e-5
    # LoRA in the backbone only, the heads proven too
    assert "through the whole model (mode='tensor'), float64" in proc.stdout
    merged = check_file(out, swin['state'])
    qkv = 'backbone.stages.2.blocks.0.attn.w_msa.qkv'
    assert torch.equal(merged['state_dict'][f'{qkv}.weight'],
                       folded_weight(swin['model'], qkv))
    meta = merged['meta']
    assert meta['folded'][0] == 'backbone.stages.0.blocks.0.attn.w_msa.qkv'
    assert (meta['insert'], meta['checkpoints'], meta['mmext_merged']) == (
        [], [swin['base'], swin['delta']], 1)
    assert meta['dataset_meta'] == DATASET_META
    assert 'without model.insert' in meta['needs']
    assert stock_max_difference('mmdet', SWIN, out, swin['ref'],
                                tiny_dir) <= 1e-5


def test_mit_conv_lora_merges_into_a_stock_checkpoint(in_tiny, tmp_path,
                                                      capsys):
    """SegFormer: LoRA beside Conv2d (sr 2x2/4x4/8x8 stride convs, Mix-FFN
    1x1 convs) folded from one full checkpoint; stock mmseg loads it."""
    model = trained(MIT, r'\.lora_[AB]\.')
    ckpt, out = str(tmp_path / 'trained.pth'), str(tmp_path / 'merged.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    ref = str(tmp_path / 'ref.pth')
    reference(model, (1, 3, 64, 64), ref)
    result = str(tmp_path / 'merge.json')
    assert tool.main([MIT, ckpt, '--out', out, '--json', result]) == 0
    text = capsys.readouterr().out
    with open(result) as f:
        data = json.load(f)
    assert (data['proven'], data['out'], data['atol']) == (True, out, 1e-5)
    assert data['max_abs_difference'] == pytest.approx(
        float(PROVEN.search(text).group(1)), rel=1e-3)  # printed with %.3e
    assert len(data['meta']['folded']) == 11
    assert ('folded 11 LoRA branches of insert[0] LoRA(rank=4, alpha=8) '
            'into the weights of backbone.layers.{0..2}.1.0.attn.sr, '
            'backbone.layers.{0..3}.1.0.ffn.layers.{0,4}') in text
    assert float(PROVEN.search(text).group(1)) <= 1e-5
    merged = check_file(out, model.state_dict())
    for conv in ('backbone.layers.0.1.0.attn.sr',  # 8x8, stride 8
                 'backbone.layers.3.1.0.ffn.layers.4'):  # 1x1
        assert torch.equal(merged['state_dict'][f'{conv}.weight'],
                           folded_weight(model, conv)), conv
    assert 'dataset_meta' not in merged['meta']
    assert stock_max_difference('mmseg', MIT, out, ref, in_tiny) <= 1e-5


def test_adapters_need_keep_adapters(in_tiny, tmp_path, capsys):
    out = str(tmp_path / 'merged.pth')
    assert tool.main([R18_ADAPTERS, 'checkpoints/retinanet_r18_stock_tiny.pth',
                      '--out', out]) == 2
    err = capsys.readouterr().err
    assert error_line(err).startswith(
        f'mmext-merge: error: {R18_ADAPTERS}: '
        'model.insert holds entries that cannot be folded')
    assert 'insert[0] Adapter(reduction=4) at backbone.layer{2..4}' in err
    assert '--keep-adapters folds the other entries' in err
    assert not os.path.exists(out)

    model = trained(R18_ADAPTERS, r'\.adapter\.up\.')  # adapters only
    ckpt = str(tmp_path / 'trained.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    assert tool.main([R18_ADAPTERS, ckpt, '--out', out,
                      '--keep-adapters']) == 0
    text = capsys.readouterr().out
    assert 'no foldable entry in model.insert: nothing folded' in text
    assert 'merge proven: max 0.000e+00' in text
    merged = torch.load(out, weights_only=True)
    assert merged['meta']['insert'] == [dict(
        type='Adapter', targets=r'backbone\.layer[2-4]', reduction=4)]
    for key, value in model.state_dict().items():
        assert torch.equal(merged['state_dict'][key], value), key


MIXED = '''_base_ = {base!r}
model = dict(insert=[
    dict(type='LoRA', targets=r'bbox_head\\.(cls|reg)_convs\\.0', rank=2),
    dict(type='Adapter', targets=r'backbone\\.layer[2-4]', reduction=4)])
'''


def test_keep_adapters_folds_conv_module_lora(in_tiny, tmp_path, capsys):
    """LoRA on RetinaHead's ConvModules folded, adapters kept: the file
    loads into the config with only the Adapter entry; the proof runs the
    whole model (the head), and fails where --module skips the head."""
    config = tmp_path / 'mixed.py'
    config.write_text(MIXED.format(base=R18_ADAPTERS))
    model = trained(str(config), r'\.(lora_[AB]|adapter\.up)\.')
    ckpt, out = str(tmp_path / 'trained.pth'), str(tmp_path / 'merged.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    argv = [str(config), ckpt, '--out', out, '--keep-adapters']
    assert tool.main(argv + ['--module', 'backbone']) == 1
    text = capsys.readouterr().out
    assert ('2 folded targets did not run through backbone: '
            'bbox_head.{cls_convs,reg_convs}.0') in text
    assert not os.path.exists(out) and not os.path.exists(out + '.part')

    assert tool.main(argv) == 0
    text = capsys.readouterr().out
    assert "through the whole model (mode='tensor')" in text
    assert float(PROVEN.search(text).group(1)) <= 1e-5
    merged = check_file(out, model.state_dict())
    conv = 'bbox_head.cls_convs.0.conv'
    assert torch.equal(merged['state_dict'][f'{conv}.weight'],
                       folded_weight(model, 'bbox_head.cls_convs.0'))
    assert merged['meta']['insert'] == [dict(
        type='Adapter', targets=r'backbone\.layer[2-4]', reduction=4)]
    assert 'only (the kept entries; mmext_init imported)' in \
        merged['meta']['needs']
    adapters_only, _ = cfp.build_initialized(Config.fromfile(R18_ADAPTERS))
    adapters_only.load_state_dict(merged['state_dict'], strict=True)


def test_proof_failure_writes_nothing(swin, in_tiny, tmp_path, capsys):
    """The folded weights are rounded to float32: in float64 the outputs
    differ a little, which atol=0 does not accept."""
    out = str(tmp_path / 'merged.pth')
    assert tool.main([SWIN, swin['base'], '--delta', swin['delta'],
                      '--out', out, '--atol', '0']) == 1
    text = capsys.readouterr().out
    worst = float(re.search(r'^merge NOT proven: max (\S+) \(atol 0\)',
                            text, re.M).group(1))
    assert 0 < worst <= 1e-5
    assert f'nothing written to {out}' in text
    assert os.listdir(tmp_path) == []


def test_checkpoints_that_do_not_fit_exit_2(swin, in_tiny, tmp_path, capsys):
    """A delta on another base (one frozen tensor changed) is refused, and
    so is a checkpoint without the LoRA tensors."""
    state = torch.load(swin['base'])['state_dict']
    state['backbone.patch_embed.projection.weight'][0, 0, 0, 0] += 1
    other = str(tmp_path / 'other_base.pth')
    torch.save({'state_dict': state}, other)
    out = str(tmp_path / 'merged.pth')
    assert tool.main([SWIN, other, '--delta', swin['delta'],
                      '--out', out]) == 2
    err = capsys.readouterr().err
    assert error_line(err).startswith(f'mmext-merge: error: {SWIN}: ')
    assert (f"delta checkpoint {swin['delta']} was trained from another "
            f'base than {other}') in err
    stock = 'checkpoints/retinanet_swin_stock_tiny.pth'
    assert tool.main([SWIN, stock, '--out', out]) == 2
    err = capsys.readouterr().err
    assert 'strict=True and missing keys: backbone.stages.0.blocks.0.attn.' \
        'w_msa.qkv.lora_A.weight' in err
    assert sorted(os.listdir(tmp_path)) == ['other_base.pth']


class VectorNet(BaseModel):
    """A model whose input is a batch of 16-vectors, not images."""

    def __init__(self, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU(),
                                     nn.Linear(32, 8))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.encoder(inputs)


MODELS.register_module('MergeVectorNet', module=VectorNet, force=True)
VECTOR = """model = dict(type='MergeVectorNet', insert=[
    dict(type='LoRA', targets=r'encoder\\.[02]', rank=2)])
"""


def test_input_that_is_no_image_is_an_error_naming_the_options(tmp_path,
                                                               capsys):
    """The default input (1, 3, 224, 224) cannot go through a model of
    vectors: exit 2 naming --input-shape and --module, nothing written;
    with --input-shape the merge is proven through the whole model."""
    config = tmp_path / 'vector.py'
    config.write_text(VECTOR)
    model = trained(str(config), r'\.lora_[AB]\.')
    ckpt, out = str(tmp_path / 'trained.pth'), str(tmp_path / 'merged.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    assert tool.main([str(config), ckpt, '--out', out]) == 2
    captured = capsys.readouterr()
    assert error_line(captured.err).startswith(
        'mmext-merge: error: the input (1, 3, 224, 224) (the default for '
        'images, 1x3x224x224: no crop_size, data preprocessor size or test '
        "Resize in the config) does not run through the whole model "
        "(mode='tensor'): RuntimeError: mat1 and mat2 shapes cannot be "
        'multiplied')
    assert 'Give --input-shape with the shape the model takes and, for a ' \
        'part of the model, --module' in captured.err
    assert sorted(os.listdir(tmp_path)) == ['trained.pth', 'vector.py']
    assert tool.main([str(config), ckpt, '--out', out, '--input-shape', '4',
                      '16']) == 0
    text = capsys.readouterr().out
    assert "on input (4, 16) through the whole model (mode='tensor')" in text
    assert float(PROVEN.search(text).group(1)) <= 1e-5


class _Twice(InsertType):
    """A toy foldable type: doubles its Linear target's output."""
    foldable = True

    def insert(self, target, path):
        target.register_forward_hook(lambda m, a, out: 2 * out)
        return []

    def fold(self, target, path):
        return {'weight': 2 * target.weight, 'bias': 2 * target.bias}


class _BadFold(_Twice):
    def fold(self, target, path):
        return {'lora_C.weight': None}


@pytest.fixture
def toy_types():
    INSERT_TYPES.register_module(name='Twice', module=_Twice, force=True)
    INSERT_TYPES.register_module(name='BadFold', module=_BadFold, force=True)
    yield
    for name in ('Twice', 'BadFold'):
        INSERT_TYPES.module_dict.pop(name)


def test_fold_entries_follow_insertion_order_on_a_copy(toy_types):
    """Two foldable entries on one layer fold in insertion order (LoRA
    first, then the doubling: 2 (W + sBA) x + 2 b), each fold reading the
    one before; the model given stays as it was (it is the proof's
    reference)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    insert = [dict(type='LoRA', targets='0', rank=2, alpha=4),
              dict(type='Twice', targets='0')]
    insert_modules(model, insert)
    nn.init.normal_(model[0].lora_B.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold.targets_of(model, [0, 1])
    state = fold.fold_entries(model, insert, folded)
    assert sorted(state) == ['0.bias', '0.weight']
    plain = nn.Linear(6, 4).double()
    plain.load_state_dict({k[2:]: v.double() for k, v in state.items()})
    x = torch.randn(3, 6, dtype=torch.float64)
    expected = copy.deepcopy(model).double()(x)
    assert torch.allclose(plain(x), expected, rtol=0, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model[0].weight.dtype == torch.float32


def test_a_fold_naming_no_tensor_is_an_error(toy_types):
    model = nn.Sequential(nn.Linear(6, 4))
    insert = [dict(type='BadFold', targets='0')]
    insert_modules(model, insert)
    with pytest.raises(tool.MergeError, match=r"insert\[0\] BadFold\(\): "
                       r"folding '0\.lora_C\.weight' names no tensor of "
                       r"Linear \(it has bias, weight\)"):
        fold.fold_entries(model, insert, fold.targets_of(model, [0]))
