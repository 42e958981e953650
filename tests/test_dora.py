"""``DoRA`` inserted from the config (mmext_init/inserting/methods/dora.py) against
HF PEFT's ``use_dora=True`` (the reference), on ``nn.Linear`` and
``nn.Conv2d`` (rsLoRA's scale too); an mmcv ``ConvModule``; the magnitude's
declared init (``DoRAMagnitude``) on a real mmpretrain ViT built through
``MODELS.build`` with a ``Pretrained`` backbone (the norm of the *loaded*
weight, unless a checkpoint holds the magnitude); the Runner's ``load_from``
refused; and ``mmext-merge`` folding it into the qkv weights of
configs/mmpretrain/vit_dora_tiny.py."""
import copy
import os
import pickle
import subprocess
import sys
from typing import Dict

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import BaseModule, initialize
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS
from peft import LoraConfig, get_peft_model

from mmext_init import get_provenance
from mmext_init.errors import InitConfigError
from mmext_init.inserting import DoRA, insert_modules, lora_delta
from mmext_init.tools import check_function_preserving as cfp
from mmext_init.tools import merge_inserted as tool
from runner_utils import ToyModel, run_runner

MMLogger.get_current_instance()  # before any capsys test (see test_merge)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT_DORA = os.path.join(REPO, 'configs', 'mmpretrain', 'vit_dora_tiny.py')
ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
QKV = r'backbone\.layers\.\d+\.attn\.qkv'


class Pair(nn.Module):
    """A Linear and two convs (stride/padding, dilation/reflect padding)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 12)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.dil = nn.Conv2d(6, 4, 3, padding=2, dilation=2,
                             padding_mode='reflect')

    def forward(self, x, v):
        return self.fc(v), self.dil(self.conv(x))


def peft_names(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """PEFT's state dict with ``base_layer.`` and ``.default`` removed."""
    return {k.replace('base_model.model.', '').replace('base_layer.', '')
            .replace('.default', ''): v for k, v in state.items()}


def dora_pair(base: nn.Module, dropout: float,
              use_rslora: bool = False) -> nn.Module:
    ours = copy.deepcopy(base)
    for name in ('fc', 'conv', 'dil'):
        DoRA(rank=4, alpha=8, dropout=dropout, use_rslora=use_rslora).insert(
            getattr(ours, name), name)
    return ours


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('dropout, use_rslora', [(0.0, False), (0.1, False),
                                                 (0.0, True)])
def test_outputs_and_gradients_equal_pefts(dtype, dropout, use_rslora):
    """PEFT's state dict (names mapped) loads strict into ours; the same
    A, B and magnitude give PEFT's outputs and gradients exactly, in eval
    and in train mode (dropout drawn from the same seed), rsLoRA's scale
    too."""
    torch.manual_seed(0)
    base = Pair().to(dtype)
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, use_dora=True,
        use_rslora=use_rslora, target_modules=['fc', 'conv', 'dil']))
    with torch.no_grad():  # as after training
        for name, p in peft.named_parameters():
            if '.lora_' in name:
                p.mul_(torch.rand_like(p) + 0.5).add_(torch.randn_like(p))
    ours = dora_pair(base, dropout, use_rslora)
    assert ours.fc.lora_scale == peft.base_model.model.fc.scaling['default']
    state = peft_names(peft.state_dict())
    assert sorted(state) == sorted(ours.state_dict())
    ours.load_state_dict(state, strict=True)
    x, v = torch.randn(2, 3, 9, 9, dtype=dtype), torch.randn(5, 16,
                                                             dtype=dtype)
    for train in (False, True):
        peft.train(train), ours.train(train)
        outs = []
        for model in (peft, ours):
            torch.manual_seed(1)
            out = model(x, v)
            sum(o.square().sum() for o in out).backward()
            outs.append(out)
        for a, b in zip(*outs):
            assert (a - b).abs().max().item() == 0.0, (train, dtype)
        grads = peft_names({n: p.grad for n, p in peft.named_parameters()
                            if p.grad is not None})
        assert len(grads) == 9
        mine = dict(ours.named_parameters())
        for name, grad in grads.items():
            assert torch.equal(mine[name].grad, grad), name
        peft.zero_grad(), ours.zero_grad()


class Root(BaseModule):
    def __init__(self, base: nn.Module):
        super().__init__()
        self.net = base


def test_initial_magnitude_equals_pefts_and_keeps_the_function():
    """The constructor and the declared init give PEFT's magnitude (the
    norm per output channel of the weight, B zero): outputs unchanged."""
    torch.manual_seed(0)
    base = Pair()
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=4, lora_alpha=8, use_dora=True,
        target_modules=['fc', 'conv', 'dil']))
    expected = {k: v for k, v in peft_names(peft.state_dict()).items()
                if 'magnitude' in k}
    root = Root(dora_pair(base, 0.0))
    built = {k: v.clone() for k, v in root.net.state_dict().items()
             if 'magnitude' in k}
    with torch.no_grad():
        for name, p in root.named_parameters():
            if 'magnitude' in name:
                p.fill_(-1.0)  # the declared init must set it
    root.init_weights()
    state = root.net.state_dict()
    assert sorted(expected) == sorted(built) and len(expected) == 3
    for name, value in expected.items():
        assert torch.equal(built[name], value), name
        assert torch.equal(state[name], value), name
    x, v = torch.randn(2, 3, 9, 9), torch.randn(5, 16)
    for a, b in zip(base(x, v), root.net(x, v)):
        assert torch.equal(a, b)
    with torch.no_grad():  # copies run their own magnitude
        root.net.fc.lora_magnitude_vector.weight.mul_(2)
    copied = pickle.loads(pickle.dumps(copy.deepcopy(root.net)))
    with torch.no_grad():
        root.net.fc.lora_magnitude_vector.weight.fill_(0)
    assert torch.allclose(copied(x, v)[0], 2 * base(x, v)[0] -
                          base.fc.bias, rtol=1e-5, atol=1e-5)


def vit(init_cfg=None, insert=None, root_init=None) -> nn.Module:
    """An mmpretrain ViT ImageClassifier built through ``MODELS.build``."""
    cfg = dict(type='ImageClassifier', init_cfg=root_init,
               backbone=dict(type='VisionTransformer', arch=ARCH,
                             img_size=32, patch_size=8, init_cfg=init_cfg),
               head=dict(type='VisionTransformerClsHead', num_classes=4,
                         in_channels=32))
    if insert:
        cfg['insert'] = insert
    init_default_scope('mmpretrain')
    return MODELS.build(cfg)


@pytest.fixture(scope='module')
def plain(tmp_path_factory):
    """A plain ViT, its checkpoint (written to a temp dir) and a DoRA entry."""
    torch.manual_seed(0)
    model = vit()
    model.init_weights()
    path = str(tmp_path_factory.mktemp('dora') / 'vit.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    return model.eval(), path


def rows_norm(weight: torch.Tensor) -> torch.Tensor:
    return torch.linalg.norm(weight, dim=1)


def test_magnitude_is_the_norm_of_the_loaded_weight(plain):
    """Pretrained on the backbone: the magnitude (declared init, run after
    the checkpoint copy) is the norm of the checkpoint's qkv weight, not of
    the constructor's; the ledger names DoRAMagnitude; the function is the
    plain loaded model's, bit for bit."""
    base, path = plain
    torch.manual_seed(5)
    model = vit(dict(type='Pretrained', checkpoint=path, prefix='backbone.'),
                [dict(type='DoRA', targets=QKV, rank=2, alpha=4)])
    qkv = model.backbone.layers[1].attn.qkv
    model.init_weights()
    loaded = base.backbone.layers[1].attn.qkv.weight
    assert torch.equal(qkv.weight, loaded)
    assert torch.equal(qkv.lora_magnitude_vector.weight, rows_norm(loaded))
    entry = get_provenance(model).entries[
        'backbone.layers.1.attn.qkv.lora_magnitude_vector.weight']
    assert (entry.kind, entry.source) == ('initializer', 'DoRAMagnitude')
    assert 'inserted by DoRA(rank=2, alpha=4) from insert[0]' in entry.notes
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model.extract_feat(x)[0], base.extract_feat(x)[0])


def test_a_checkpoint_with_the_magnitude_loads_it(plain, tmp_path):
    """A checkpoint holding the magnitudes (a trained DoRA model) loads
    them; one holding A and B but no magnitude gets m = ||W + sBA||: the
    function is then the LoRA update's, W + sBA."""
    base, path = plain
    insert = [dict(type='DoRA', targets=QKV, rank=2, alpha=4)]
    torch.manual_seed(1)
    trained = vit(insert=insert)
    trained.init_weights()
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if '.lora_' in name:
                p.add_(torch.rand_like(p))
    full, lora = str(tmp_path / 'full.pth'), str(tmp_path / 'lora.pth')
    state = trained.state_dict()
    torch.save({'state_dict': state}, full)
    torch.save({'state_dict': {k: v for k, v in state.items()
                               if 'magnitude' not in k}}, lora)
    name = 'backbone.layers.0.attn.qkv.lora_magnitude_vector.weight'
    model = vit(insert=insert, root_init=dict(type='Pretrained',
                                              checkpoint=full))
    model.init_weights()
    assert torch.equal(model.state_dict()[name], state[name])
    assert get_provenance(model).entries[name].kind == 'checkpoint'
    model = vit(insert=insert, root_init=dict(type='Pretrained',
                                              checkpoint=lora))
    model.init_weights()
    qkv = model.backbone.layers[0].attn.qkv
    merged = qkv.weight + lora_delta(qkv)
    assert torch.allclose(qkv.lora_magnitude_vector.weight, rows_norm(merged),
                          rtol=1e-6, atol=0)
    x = torch.randn(3, 5, 32)
    assert torch.allclose(qkv(x), nn.functional.linear(x, merged, qkv.bias),
                          rtol=0, atol=1e-5)


@ROOT_MODELS.register_module(force=True)
class DoRAToyModel(ToyModel):
    """The toy Runner model, registered to be built from a config."""


def test_load_from_without_magnitudes_is_an_error(tmp_path):
    """``load_from`` loads the target's weight after ``init_weights()``
    computed the magnitude from the constructor's: an error naming the
    load, the tensors and what to do instead."""
    base = str(tmp_path / 'base.pth')
    torch.save({'state_dict': ToyModel().state_dict()}, base)
    model = dict(type='DoRAToyModel', insert=[
        dict(type='DoRA', targets=r'backbone\.fc1', rank=2)])
    with pytest.raises(InitConfigError) as error:
        run_runner(str(tmp_path / 'work'), model, iters=1, load_from=base)
    assert str(error.value) == (
        f"DoRA at 'backbone.fc1': load_from={base!r} loads "
        'backbone.fc1.weight after init_weights() set '
        'backbone.fc1.lora_magnitude_vector.weight from the weight it '
        "replaces (DoRAMagnitude); give that checkpoint through the model's "
        "init_cfg=dict(type='Pretrained', checkpoint=...) instead, or "
        'load_from a checkpoint that holds the magnitudes')


@pytest.mark.parametrize('layer, message', [
    (nn.Conv2d(4, 4, 3, groups=2), "'0' (Conv2d) has groups=2; DoRA applies "
     'to convolutions with groups=1'),
    (nn.Embedding(5, 4), "'0' (Embedding) is not a supported layer: DoRA "
     'applies to nn.Linear, nn.Conv2d and mmcv ConvModule'),
])
def test_unsupported_targets_are_errors(layer, message):
    with pytest.raises(InitConfigError) as error:
        insert_modules(nn.Sequential(layer), [
            dict(type='DoRA', targets='0', rank=2)])
    assert str(error.value) == \
        f"insert[0] (DoRA, targets='0'): DoRA: {message}"


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory) -> str:
    """The stock ViT Runner checkpoint (tools/make_tiny_data.py), in the
    e2e tests' ``<basetemp>/tiny``."""
    path = tmp_path_factory.getbasetemp() / 'tiny'
    path.mkdir(exist_ok=True)
    subprocess.run([sys.executable, os.path.join(REPO, 'tools',
                                                 'make_tiny_data.py'),
                    '--out-dir', str(path), '--only', 'ckpt',
                    '--checkpoint', 'vit_stock_tiny.pth'],
                   check=True, capture_output=True)
    return str(path)


def merge_trained(config: str, new: str, tmp_path, capsys):
    """The model of ``config`` with the tensors whose names contain ``new``
    drawn (as after training), saved, merged by ``mmext-merge`` through the
    whole model (exit 0): the model, the merged state dict, the output."""
    torch.manual_seed(3)
    model, _ = cfp.build_initialized(Config.fromfile(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if new in name:
                p.mul_(torch.rand_like(p) + 0.5)
                p.add_(0.05 * torch.randn_like(p))
    ckpt, out = str(tmp_path / 'trained.pth'), str(tmp_path / 'merged.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    assert tool.main([config, ckpt, '--out', out, '--module', 'tensor',
                      '--input-shape', '2', '3', '32', '32']) == 0
    merged = torch.load(out, weights_only=True)['state_dict']
    return model, merged, capsys.readouterr().out


def test_merge_tool_folds_dora_exactly(tiny_dir, tmp_path, monkeypatch,
                                       capsys):
    """vit_dora_tiny.py with A, B and the magnitudes drawn (as after
    training): ``mmext-merge`` folds m / ||W + sBA|| (W + sBA) into each
    qkv weight and proves it through the whole model."""
    monkeypatch.chdir(tiny_dir)
    model, merged, text = merge_trained(VIT_DORA, '.lora_', tmp_path, capsys)
    assert ('folded 4 DoRA branches of insert[0] DoRA(rank=4, alpha=8) into '
            'the weights of backbone.layers.{0..3}.attn.qkv') in text
    assert "through the whole model (mode='tensor'), float64" in text
    assert not [k for k in merged if 'lora' in k]
    for i in range(4):
        qkv = copy.deepcopy(model.backbone.layers[i].attn.qkv).double()
        with torch.no_grad():
            weight = qkv.weight + lora_delta(qkv)
            expected = (qkv.lora_magnitude_vector.weight /
                        rows_norm(weight))[:, None] * weight
        name = f'backbone.layers.{i}.attn.qkv.weight'
        assert torch.equal(merged[name], expected.float()), name
        assert not torch.equal(merged[name], model.state_dict()[name])


def test_magnitude_init_outside_a_model_is_an_error():
    """``DoRAMagnitude`` reads the target's weight: on the magnitude alone
    (no model around it) an error saying to initialize the model."""
    fc = nn.Linear(3, 2)
    DoRA(rank=1).insert(fc, 'fc')
    with pytest.raises(InitConfigError, match=(
            r'^DoRAMagnitude reads the weight of the DoRA target holding the '
            r'magnitude: call init_weights\(\) on the model$')):
        initialize(fc.lora_magnitude_vector, dict(type='DoRAMagnitude'))
    with pytest.raises(InitConfigError, match=(
            r'^DoRAMagnitude: the magnitude at the root of the '
            r'DoRAMagnitudeVector initialized is not the '
            r'lora_magnitude_vector of a DoRA target in it: call '
            r'init_weights\(\) on the model holding the target$')):
        fc.lora_magnitude_vector.init_weights()


def test_conv_module_target_initializes_and_folds():
    """An mmcv ConvModule (conv, BN, ReLU): DoRA on its conv, names under
    ``conv.``; the magnitude is the norm of the conv weight ConvModule's
    own ``init_weights`` wrote, so the function is the plain module's; the
    fold (in float64) gives the DoRA'd module's output."""
    torch.manual_seed(0)
    block = ConvModule(3, 4, 3, padding=1, norm_cfg=dict(type='BN')).eval()
    x = torch.randn(2, 3, 6, 6)
    root = Root(block)
    records = insert_modules(root, [dict(type='DoRA', targets='net',
                                         rank=2)])
    assert records[0].names == ('net.conv.lora_A.weight',
                                'net.conv.lora_B.weight',
                                'net.conv.lora_magnitude_vector.weight')
    root.init_weights()
    weight = block.conv.weight
    assert torch.equal(block.conv.lora_magnitude_vector.weight,
                       weight.norm(p=2, dim=(1, 2, 3)).view(1, -1, 1, 1))
    plain = ConvModule(3, 4, 3, padding=1, norm_cfg=dict(type='BN')).eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items()
                           if 'lora' not in k})
    assert torch.equal(block(x), plain(x))
    block.double()
    with torch.no_grad():
        for name, p in block.named_parameters():
            if '.lora_' in name:
                p.add_(torch.rand_like(p))
    updates = DoRA(rank=2).fold(block, 'net')
    assert sorted(k for k, v in updates.items() if v is None) == [
        'conv.lora_A.weight', 'conv.lora_B.weight',
        'conv.lora_magnitude_vector.weight']
    plain.double().load_state_dict(
        {**{k: v for k, v in block.state_dict().items() if 'lora' not in k},
         'conv.weight': updates['conv.weight']})
    assert torch.allclose(plain(x.double()), block(x.double()), rtol=0,
                          atol=1e-12)
