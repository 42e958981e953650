"""``SSF`` inserted from the config (mmext_init/inserting/methods/ssf.py): against
the paper's formula y = gamma * f(x) + beta on the same layer (Linear,
Conv2d, BatchNorm, LayerNorm), its two declared inits (the identity by
default, the paper's N(1, 0.02) / N(0, 0.02) draws with ``init='paper'``),
folding (exact in float64; a target without a bias refused) and
``mmext-merge`` proving the merge of configs/mmpretrain/vit_ssf_tiny.py
and refusing a ``bias=False`` conv of an mmpretrain ResNet; ``mmext-check
--atol 0`` on the SSF and DoRA ViT examples."""
import copy
import os

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import BaseModule

from mmext_init import get_provenance
from mmext_init.errors import InitConfigError
from mmext_init.inserting import SSF, insert_modules
from mmext_init.tools import check_function_preserving as cfp
from mmext_init.tools import merge_inserted as tool
from test_dora import merge_trained, tiny_dir  # noqa: F401 (a fixture)

MMLogger.get_current_instance()  # before any capsys test (see test_merge)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT_SSF = os.path.join(REPO, 'configs', 'mmpretrain', 'vit_ssf_tiny.py')

# (layer, input shape, channel dim of the output)
LAYERS = {
    'linear': (lambda: nn.Linear(6, 5), (2, 3, 6), -1),
    'conv': (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (2, 3, 7, 7),
             1),
    'grouped_conv': (lambda: nn.Conv2d(4, 6, 3, groups=2), (2, 4, 5, 5), 1),
    'bn2d': (lambda: nn.BatchNorm2d(5), (4, 5, 3, 3), 1),
    'bn1d': (lambda: nn.BatchNorm1d(5), (4, 5), 1),
    'layernorm': (lambda: nn.LayerNorm(5), (2, 3, 5), -1),
}


def drawn(layer: nn.Module) -> nn.Module:
    """``layer`` with random affine params (a BN with running stats)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 2)
    return layer


def with_ssf(plain: nn.Module) -> nn.Module:
    """A copy of ``plain`` with SSF inserted, scale and shift drawn."""
    layer = copy.deepcopy(plain)
    assert SSF().insert(layer, 'layer') == ['ssf']
    with torch.no_grad():
        layer.ssf.scale.copy_(1 + torch.randn_like(layer.ssf.scale))
        layer.ssf.shift.copy_(torch.randn_like(layer.ssf.shift))
    return layer


def paper(plain: nn.Module, ssf: nn.Module, x: torch.Tensor,
          dim: int) -> torch.Tensor:
    """The paper's y = gamma * f(x) + beta, gamma and beta broadcast on the
    channel dim ``dim``, written by hand."""
    out = plain(x)
    shape = [1] * out.dim()
    shape[dim] = -1
    return ssf.scale.reshape(shape) * out + ssf.shift.reshape(shape)


@pytest.mark.parametrize('kind', sorted(LAYERS))
@pytest.mark.parametrize('train', [False, True])
def test_outputs_follow_the_papers_formula(kind, train):
    make, shape, dim = LAYERS[kind]
    torch.manual_seed(0)
    plain = drawn(make()).train(train)
    layer = with_ssf(plain).train(train)
    x = torch.randn(shape)
    got, expected = layer(x), paper(plain, layer.ssf, x, dim)
    assert torch.equal(got, expected), kind
    assert not torch.equal(got, plain(x))
    (got.square().sum()).backward()
    assert layer.ssf.scale.grad.abs().sum() > 0
    assert layer.ssf.shift.grad.abs().sum() > 0


@pytest.mark.parametrize('kind', sorted(LAYERS))
def test_fold_is_exact_in_float64(kind):
    """weight * gamma per output channel and bias = gamma * bias + beta:
    the plain layer with the folded tensors gives the SSF output."""
    make, shape, _ = LAYERS[kind]
    torch.manual_seed(1)
    plain = drawn(make()).double().eval()
    layer = with_ssf(plain)
    updates = SSF().fold(layer, 'layer')
    assert updates.pop('ssf.scale') is None
    assert updates.pop('ssf.shift') is None
    assert sorted(updates) == ['bias', 'weight']
    folded = copy.deepcopy(plain)
    folded.load_state_dict({**folded.state_dict(), **updates})
    x = torch.randn(shape, dtype=torch.float64)
    assert torch.allclose(folded(x), layer(x), rtol=0, atol=1e-12)


class Root(BaseModule):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x)


def build(init: str) -> Root:
    body = nn.Sequential(nn.Linear(8, 512), nn.LayerNorm(512),
                         nn.Linear(512, 4))
    root = Root(body)
    insert_modules(root, [dict(type='SSF', targets=r'body\.[01]',
                               **({} if init is None else dict(init=init)))])
    return root


def test_default_init_is_the_identity_declared_in_init_cfg():
    """Default: ScaleShift(std=0) declared; after init_weights (scale and
    shift set off first) ones and zeros: the function is unchanged."""
    torch.manual_seed(0)
    root = build(None)
    plain = copy.deepcopy(root.body)
    ssf = root.body[0].ssf
    assert ssf.init_cfg == dict(type='ScaleShift', std=0.0)
    with torch.no_grad():
        for name, p in root.named_parameters():
            if '.ssf.' in name:
                p.fill_(3.0)
    root.init_weights()
    assert torch.equal(ssf.scale, torch.ones(512))
    assert torch.equal(ssf.shift, torch.zeros(512))
    entry = get_provenance(root).entries['body.0.ssf.scale']
    assert entry.describe() == 'ScaleShift(std=0.0) from body.0.ssf'
    x = torch.randn(3, 8)
    for module in list(plain.children())[:2]:  # the plain targets
        module._forward_hooks.clear()
        del module.ssf
    assert torch.equal(root(x), plain(x))


def test_paper_init_draws_normal_around_one_and_zero():
    """init='paper': scale ~ N(1, 0.02), shift ~ N(0, 0.02), declared
    (ScaleShift(std=0.02)) and drawn by init_weights."""
    torch.manual_seed(0)
    root = build('paper')
    root.init_weights()
    for name in ('body.0.ssf', 'body.1.ssf'):
        ssf = root.get_submodule(name)
        assert ssf.init_cfg == dict(type='ScaleShift', std=0.02)
        for tensor, mean in ((ssf.scale, 1.0), (ssf.shift, 0.0)):
            assert abs(tensor.mean().item() - mean) < 0.005, name
            assert 0.017 < tensor.std().item() < 0.023, name
    assert get_provenance(root).entries['body.1.ssf.shift'].args == {
        'std': 0.02}


def test_bad_arguments_and_targets_are_errors():
    with pytest.raises(InitConfigError, match=r"^insert\[0\] \(SSF, "
                       r"targets='0'\): SSF: init must be 'identity' or "
                       r"'paper', got 'normal'$"):
        insert_modules(nn.Sequential(nn.Linear(2, 2)),
                       [dict(type='SSF', targets='0', init='normal')])
    with pytest.raises(InitConfigError) as error:
        insert_modules(nn.Sequential(nn.ReLU()),
                       [dict(type='SSF', targets='0')])
    assert str(error.value) == (
        "insert[0] (SSF, targets='0'): SSF: '0' (ReLU) is not a supported "
        'layer: SSF follows nn.Linear, nn.Conv2d, BatchNorm and nn.LayerNorm')


def test_a_target_without_bias_cannot_fold():
    layer = nn.Conv2d(3, 4, 1, bias=False)
    SSF().insert(layer, 'backbone.conv1')
    with pytest.raises(ValueError) as error:
        SSF().fold(layer, 'backbone.conv1')
    assert str(error.value) == (
        "SSF at 'backbone.conv1' (Conv2d): no bias to fold the shift into; "
        'target a layer with a bias, e.g. the BatchNorm after a conv with '
        'bias=False')


def test_merge_tool_folds_ssf_into_the_vit(tiny_dir, tmp_path, monkeypatch,
                                          capsys):
    """vit_ssf_tiny.py, scales and shifts drawn (as after training): every
    SSF folded into its target (patch conv, LayerNorms, Linears), proven
    through the whole model; each folded tensor is the formula's."""
    monkeypatch.chdir(tiny_dir)
    model, merged, text = merge_trained(VIT_SSF, '.ssf.', tmp_path, capsys)
    assert 'folded 26 SSF branches of insert[0] SSF() into the weights of ' \
        'backbone.patch_embed.projection, backbone.layers.{0..3}.ln{1..2}, ' \
        'backbone.layers.{0..3}.attn.{qkv,proj}, backbone.layers.{0..3}.' \
        'ffn.layers.0.0, backbone.layers.{0..3}.ffn.layers.1, ' \
        'backbone.ln1' in text
    assert "through the whole model (mode='tensor'), float64" in text
    assert not [k for k in merged if '.ssf.' in k]
    state = {k: v.double() for k, v in model.state_dict().items()}
    for target, column in (('backbone.patch_embed.projection', (-1, 1, 1, 1)),
                           ('backbone.layers.2.ffn.layers.1', (-1, 1)),
                           ('backbone.layers.0.ln2', (-1, ))):
        scale = state[f'{target}.ssf.scale']
        shift = state[f'{target}.ssf.shift']
        weight = scale.view(column) * state[f'{target}.weight']
        bias = scale * state[f'{target}.bias'] + shift
        assert torch.equal(merged[f'{target}.weight'], weight.float()), target
        assert torch.equal(merged[f'{target}.bias'], bias.float()), target


RESNET = '''default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmext_init'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet', depth=18, stem_channels=8, base_channels=8,
                  num_stages=2, strides=(1, 2), dilations=(1, 1),
                  out_indices=(1, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=2, in_channels=16),
    insert=[dict(type='SSF', targets={targets!r})])
'''


def test_merge_tool_refuses_a_conv_without_bias(tmp_path, capsys):
    """SSF after ResNet's stem conv (bias=False) cannot fold: exit 2
    naming the entry and the conv; after its BatchNorm it folds."""
    results = {}
    for name, targets in (('conv', r'backbone\.conv1'),
                          ('bn', r'backbone\.bn1')):
        config = tmp_path / f'{name}.py'
        config.write_text(RESNET.format(targets=targets))
        model, _ = cfp.build_initialized(Config.fromfile(str(config)))
        ckpt = str(tmp_path / f'{name}.pth')
        torch.save({'state_dict': model.state_dict()}, ckpt)
        results[name] = tool.main([str(config), ckpt, '--out',
                                   str(tmp_path / f'{name}_merged.pth'),
                                   '--input-shape', '1', '3', '32', '32'])
        results[name + '_err'] = capsys.readouterr().err
    assert results['conv'] == 2
    assert ("mmext-merge: error: insert[0] SSF(): SSF at 'backbone.conv1' "
            '(Conv2d): no bias to fold the shift into; target a layer with '
            'a bias, e.g. the BatchNorm after a conv with bias=False'
            ) in results['conv_err']
    assert results['bn'] == 0, results['bn_err']
    assert not os.path.exists(tmp_path / 'conv_merged.pth')


# the examples' model without insert: the same loaded ViT and new head
REFERENCE = '_base_ = {base!r}\nmodel = dict(insert=[])\n'


@pytest.mark.parametrize('config, init, status', [
    ('vit_ssf_tiny.py', None, 0), ('vit_dora_tiny.py', None, 0),
    ('vit_ssf_tiny.py', 'paper', 1)])
def test_mmext_check_at_atol_0(tiny_dir, tmp_path, monkeypatch, capsys,
                               config, init, status):
    """``mmext-check --atol 0`` against the same loaded ViT without
    ``insert``: SSF's default init and DoRA's magnitude keep the backbone's
    function exactly; SSF's ``init='paper'`` changes it."""
    monkeypatch.chdir(tiny_dir)
    folder = os.path.dirname(VIT_SSF)
    reference = tmp_path / 'reference.py'
    reference.write_text(REFERENCE.format(
        base=os.path.join(folder, 'vit_lora_ft_tiny.py')))
    config = os.path.join(folder, config)
    if init is not None:
        entry = Config.fromfile(config).model.insert[0].to_dict()
        changed = tmp_path / 'paper.py'
        changed.write_text(f'_base_ = {config!r}\nmodel = dict(insert=['
                           f'{dict(entry, init=init)!r}])\n')
        config = str(changed)
    assert cfp.main([config, '--reference', str(reference), '--atol', '0',
                       '--input-shape', '2', '3', '32', '32']) == status
    verdict = 'function preserved: max 0.000e+00' if status == 0 else \
        'function CHANGED'
    assert verdict in capsys.readouterr().out
