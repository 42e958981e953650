"""The SELECTOR grammar, layer depths on real backbones, tied
parameters counted once, the selector/freeze errors, and ``insert_type``
(tensors by the insert entry that added them)."""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmdet.models.backbones import ResNet, SwinTransformer
from mmengine.config import Config
from mmengine.model import BaseModule, Sequential
from mmseg.models.backbones import MixVisionTransformer, VisionTransformer

import mmext_init
from mmext_init import ProvenanceOptimWrapperConstructor
from mmext_init.errors import InitConfigError
from mmext_init.inserting.methods.lora import LoRA, lora_layer
from mmext_init.inserting.registry import INSERT_TYPES
from mmext_init.plugin.insertion import apply_insert
from mmext_init.training.expected import param_table
from mmext_init.training.selectors import SelectorError, select

SGD = dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=0.01))


class Net(BaseModule):
    """A pretrained trunk (Linear + BatchNorm) and a new head."""

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        self.trunk = Sequential(
            nn.Linear(4, 4), nn.BatchNorm1d(4),
            init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
        self.head = nn.Linear(4, 2)


@pytest.fixture
def net(save_ckpt):
    trunk = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    return Net(save_ckpt(trunk.state_dict()))


def _names(selector, table):
    return [p.name for p in select(selector, table)]


def test_keywords_and_keys_before_and_after_init(net):
    before = param_table(net)
    assert not before.exact
    loaded = ['trunk.0.weight', 'trunk.0.bias', 'trunk.1.weight',
              'trunk.1.bias']
    assert _names('loaded', before) == loaded
    assert _names('new', before) == ['head.weight', 'head.bias']
    assert len(_names('all', before)) == 6
    assert _names(dict(module_type='_BatchNorm'), before) == loaded[2:]
    assert _names(dict(module_type='Net', name=r'.*\.bias'), before) == \
        ['trunk.0.bias', 'trunk.1.bias', 'head.bias']
    assert _names([dict(name=r'head\..*'), dict(source=r'.*ckpt_1\.pth')],
                  before) == loaded + ['head.weight', 'head.bias']
    assert _names(dict(declared_by='trunk'), before) == loaded
    with pytest.raises(SelectorError, match="only 'checkpoint' is known"):
        select(dict(provenance='initializer'), before)
    net.init_weights()
    after = param_table(net)
    assert after.exact
    assert _names(dict(provenance=['constructor']), after) == \
        ['head.weight', 'head.bias']
    assert _names(dict(provenance='checkpoint'), after) == loaded


def test_selector_matching_nothing_names_the_closest(net):
    table = param_table(net)
    with pytest.raises(SelectorError) as info:
        select(dict(name=r'haed\..*', provenance='checkpoint'), table,
               'paramwise_cfg.freeze')
    text = str(info.value)
    assert text.startswith('paramwise_cfg.freeze: selector')
    assert "name='haed\\\\..*' matches none" in text and 'provenance' not in \
        text.split('matches no parameter:')[1]
    with pytest.raises(SelectorError, match="closest names: 'BatchNorm1d'"):
        select(dict(module_type='BatchNorm1D'), table)
    with pytest.raises(SelectorError, match="did you mean 'loaded'"):
        select('laoded', table)
    with pytest.raises(SelectorError, match="unknown key 'names'"):
        select(dict(names='x'), table)
    with pytest.raises(SelectorError, match='none matches all'):
        select(dict(name=r'head\..*', provenance='checkpoint'), table)


def test_name_regexes_match_whole_names(net):
    """One regex rule (``re.fullmatch``): a pattern that only occurs inside
    names selects nothing, and the error shows the names it is part of and
    the pattern that matches them whole."""
    table = param_table(net)
    assert _names(dict(name=r'head\..*'), table) == ['head.weight',
                                                      'head.bias']
    with pytest.raises(SelectorError) as info:
        select(dict(name='head'), table, 'paramwise_cfg.freeze')
    assert "name='head' matches none (it matches only part of 2 names, " \
        "e.g. 'head.weight'" in str(info.value)
    assert "e.g. 'head.*')" in str(info.value)
    with pytest.raises(SelectorError, match=r"e\.g\. '\.\*bias\.\*'"):
        select(dict(name='bias'), table)
    assert _names(dict(name='head.*'), table) == ['head.weight', 'head.bias']


def test_freeze_and_rule_conflict_is_an_error(net):
    build = ProvenanceOptimWrapperConstructor(SGD, dict(
        freeze='loaded', rules=[dict(select=dict(name=r'.*\.bias'),
                                     lr_mult=2.0)]))
    with pytest.raises(InitConfigError,
                       match=r'rules\[0\] gives lr_mult=2.0 .*trunk'):
        build(net)
    assert all(p.requires_grad for p in net.parameters())  # nothing done


class Tied(BaseModule):
    """One conv shared by two branches (as heads share convs across
    levels)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1)
        self.b = nn.Sequential(self.a, nn.Conv2d(2, 2, 1))


def test_tied_parameters_count_once():
    model = Tied()
    table = param_table(model)
    assert [p.names for p in table.params][:2] == [
        ('a.weight', 'b.0.weight'), ('a.bias', 'b.0.bias')]
    assert len(select(dict(name=r'b\.0\..*'), table)) == 2
    build = ProvenanceOptimWrapperConstructor(
        SGD, dict(norm_decay_mult=0.0,
                  rules=[dict(select=dict(name=r'b\.1\..*'), lr_mult=3)]))
    optimizer = build(model).optimizer  # stock would add a.weight twice
    params = [p for g in optimizer.param_groups for p in g['params']]
    assert len(params) == len({id(p) for p in params}) == 4
    lrs = sorted(round(g['lr'], 6) for g in optimizer.param_groups)
    assert lrs == [0.1, 0.3]


def _lr_by_name(model, optimizer):
    lr = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    return {n: lr[id(p)] for n, p in model.named_parameters()}


def _check_table(model, table, top, rate=0.5, base=0.1):
    """``table``: module path or parameter name -> depth (every parameter
    under exactly one); ``top`` the depth of 'the rest' (lr multiplier 1)."""
    build = ProvenanceOptimWrapperConstructor(
        SGD, dict(layer_decay=dict(rate=rate, select='all')))
    lrs = _lr_by_name(model, build(model).optimizer)
    for name, lr in lrs.items():
        prefixes = [k for k in table
                    if name == k or name.startswith(k + '.')]
        assert len(prefixes) == 1, (name, prefixes)
        depth = table[prefixes[0]]
        assert lr == pytest.approx(base * rate**(top - depth)), name


def test_layer_decay_on_mmdet_swin():
    model = SwinTransformer(embed_dims=16, depths=(2, 2), num_heads=(1, 2),
                            strides=(4, 2), out_indices=(0, 1),
                            window_size=4, patch_size=4)
    _check_table(model, {
        'patch_embed': 0, 'stages.0.blocks.0': 1, 'stages.0.blocks.1': 2,
        'stages.0.downsample': 3, 'stages.1.blocks.0': 4,
        'stages.1.blocks.1': 5, 'norm0': 6, 'norm1': 6}, top=6)


def test_layer_decay_on_mmseg_mit():
    model = MixVisionTransformer(
        in_channels=3, embed_dims=8, num_stages=2, num_layers=[1, 2],
        num_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
        sr_ratios=[2, 1], out_indices=(0, 1))
    # stage parameters (patch embed, stage norm) before the stage's blocks
    _check_table(model, {
        'layers.0.0': 1, 'layers.0.2': 1, 'layers.0.1.0': 2,
        'layers.1.0': 3, 'layers.1.2': 3, 'layers.1.1.0': 4,
        'layers.1.1.1': 5}, top=6)


def test_layer_decay_on_mmdet_resnet():
    """The stem (conv1, bn1) at 0, the 8 BasicBlocks layer1.0 ... layer4.1
    at 1..8 (a block's downsample with it), nothing after: 'the rest' is
    depth 9 with no parameter, so the last block gets ``rate ** 1`` and a
    head outside the selection 1, as in mmpretrain's layer decay."""
    model = ResNet(depth=18)
    blocks = [f'layer{s}.{b}' for s in range(1, 5) for b in range(2)]
    _check_table(model, {'conv1': 0, 'bn1': 0, **{
        block: i + 1 for i, block in enumerate(blocks)}}, top=9)


def test_layer_decay_on_mmseg_vit():
    """cls_token, pos_embed and patch_embed at 0, layers.i at i + 1, the
    final norm (``ln1``) at N + 1: mmpretrain's VisionTransformer
    get_layer_depth gives the same."""
    model = VisionTransformer(img_size=32, patch_size=8, embed_dims=16,
                              num_layers=2, num_heads=2, final_norm=True)
    _check_table(model, {'cls_token': 0, 'pos_embed': 0, 'patch_embed': 0,
                         'layers.0': 1, 'layers.1': 2, 'ln1': 3}, top=3)


class LayerNorm2d(nn.LayerNorm):
    """mmpretrain's ``LayerNorm2d``: a LayerNorm over the channels of an
    NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlockShaped(BaseModule):
    """mmpretrain's ``ConvNeXtBlock`` attributes: depthwise 7x7 conv, norm,
    pointwise Linear layers, layer scale ``gamma``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise_conv = nn.Conv2d(channels, channels, 7, padding=3,
                                        groups=channels)
        self.norm = LayerNorm2d(channels)
        self.pointwise_conv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pointwise_conv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(1e-6 * torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.depthwise_conv(x)).permute(0, 2, 3, 1)
        y = self.pointwise_conv2(self.act(self.pointwise_conv1(y)))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtShaped(BaseModule):
    """A STRUCTURAL STAND-IN for mmpretrain's ``ConvNeXt`` (mmpretrain
    cannot be installed here: no CPU torchvision build), not the real
    class: the same attribute names and nesting, registered in the same
    order: ``downsample_layers`` (a ModuleList: the stem
    ``Sequential(conv 4x4/4, norm)``, then ``Sequential(norm, conv
    2x2/2)`` per later stage), ``stages`` (a ModuleList of Sequentials of
    blocks), then an output norm ``norm{i}`` per ``out_indices`` stage
    (added in the stage loop, so after both lists)."""

    def __init__(self, depths=(1, 2, 1, 1), channels=(8, 16, 16, 32),
                 out_indices=(0, 1, 2, 3)) -> None:
        super().__init__()
        self.out_indices = out_indices
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3, channels[0], 4, stride=4), LayerNorm2d(channels[0]))])
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            if i:
                self.downsample_layers.append(nn.Sequential(
                    LayerNorm2d(channels[i - 1]),
                    nn.Conv2d(channels[i - 1], channels[i], 2, stride=2)))
            self.stages.append(nn.Sequential(
                *[ConvNeXtBlockShaped(channels[i]) for _ in range(depth)]))
            if i in out_indices:
                self.add_module(f'norm{i}', LayerNorm2d(channels[i]))

    def forward(self, x: torch.Tensor) -> tuple:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
        return tuple(outs)


def test_layer_decay_on_convnext_shaped_stand_in():
    """Each stage's downsample layer before its blocks (the stem too: it
    is downsample_layers.0, a numbered block, so depth 1 and nothing at 0;
    mmpretrain's own ConvNeXt.get_layer_depth puts it at 0), the output
    norms at N + 1."""
    model = ConvNeXtShaped()
    assert [o.shape[1:] for o in model(torch.randn(1, 3, 32, 32))] == [
        (8, 8, 8), (16, 4, 4), (16, 2, 2), (32, 1, 1)]
    _check_table(model, {
        'downsample_layers.0': 1, 'stages.0.0': 2,
        'downsample_layers.1': 3, 'stages.1.0': 4, 'stages.1.1': 5,
        'downsample_layers.2': 6, 'stages.2.0': 7,
        'downsample_layers.3': 8, 'stages.3.0': 9,
        'norm0': 10, 'norm1': 10, 'norm2': 10, 'norm3': 10}, top=10)


def test_layer_decay_over_a_part_only(net):
    build = ProvenanceOptimWrapperConstructor(
        SGD, dict(layer_decay=dict(rate=0.5, select='loaded')))
    lrs = _lr_by_name(net, build(net).optimizer)
    # one block-less module: all its parameters are the stem (depth 0 of 1)
    assert lrs['trunk.0.weight'] == pytest.approx(0.05)
    assert lrs['head.weight'] == pytest.approx(0.1)


def test_exclude_selects_what_its_selector_does_not(net):
    """``exclude=SELECTOR``: the complement, ANDed with the other keys; an
    ``exclude`` whose selector matches nothing is an error (a typo would
    select all)."""
    table = param_table(net)
    assert _names(dict(exclude='loaded'), table) == ['head.weight',
                                                    'head.bias']
    assert _names(dict(name=r'trunk\..*', exclude=dict(
        module_type='_BatchNorm')), table) == ['trunk.0.weight',
                                                'trunk.0.bias']
    assert _names(dict(exclude=['new', dict(name=r'.*\.bias')]), table) == \
        ['trunk.0.weight', 'trunk.1.weight']
    with pytest.raises(SelectorError, match=r"'exclude': selector "
                       r"\{'name': 'haed'\} matches no parameter"):
        select(dict(exclude=dict(name='haed')), table)
    with pytest.raises(SelectorError, match=r"exclude='all' matches none"):
        select(dict(exclude='all'), table)
    build = ProvenanceOptimWrapperConstructor(SGD, dict(
        freeze=dict(exclude=dict(name=r'head\..*'))))
    optimizer = build(net).optimizer
    assert [n for n, p in net.named_parameters() if p.requires_grad] == \
        ['head.weight', 'head.bias']
    assert sum(len(g['params']) for g in optimizer.param_groups) == 2


@pytest.mark.parametrize('adapt', [
    dict(type='Classes', keys=r'0\.(weight|bias)', index_map=[0, 1, -1]),
    dict(type='Grow', keys=r'0\..*')], ids=['Classes', 'Grow'])
def test_freeze_loaded_trains_a_partly_new_head(save_ckpt, adapt):
    """A model that is only a head (and a new layer), its checkpoint one
    class short: the head is partly new, ``'new'`` to selectors, and
    ``provenance='checkpoint'`` still selects it. ``freeze='loaded'`` used
    to freeze it whole (``optimizer got an empty parameter list``); it now
    matches nothing and says why, and a ``freeze`` of the new layer leaves
    the head to train."""
    head = Sequential(nn.Linear(4, 3), nn.Linear(3, 3), init_cfg=dict(
        type='Pretrained', checkpoint=save_ckpt({
            f'0.{k}': v for k, v in nn.Linear(4, 2).state_dict().items()}),
        adapt=[adapt]))
    table = param_table(head)
    assert _names('new', table) == ['0.weight', '0.bias', '1.weight',
                                    '1.bias']
    assert _names(dict(provenance='checkpoint'), table) == \
        ['0.weight', '0.bias']
    with pytest.raises(SelectorError, match=(
            r"^paramwise_cfg\.freeze: selector 'loaded' matches no parameter: "
            r"the checkpoint provides only part of 2 \(partly new, so 'new': "
            rf"they train\), e\.g\. '0\.weight' <- {adapt['type']}\(")):
        ProvenanceOptimWrapperConstructor(SGD, dict(freeze='loaded'))(head)
    optimizer = ProvenanceOptimWrapperConstructor(SGD, dict(
        freeze=dict(name=r'1\..*')))(head).optimizer
    assert [n for n, p in head.named_parameters() if p.requires_grad] == \
        ['0.weight', '0.bias']
    assert sum(len(g['params']) for g in optimizer.param_groups) == 2


class Layers(BaseModule):
    """One of each layer LoRA supports, and a layer left without."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.block = ConvModule(4, 4, 1, norm_cfg=dict(type='BN'))
        self.plain = nn.Linear(4, 4)


@pytest.fixture
def half_lora():
    """A registered insert type extending LoRA (removed afterwards)."""

    class HalfLoRA(LoRA):
        """LoRA at half the scale."""

        def insert(self, target, path):
            children = super().insert(target, path)
            lora_layer(target).lora_scale /= 2
            return children

    INSERT_TYPES.register_module(module=HalfLoRA)
    yield HalfLoRA
    INSERT_TYPES.module_dict.pop('HalfLoRA')


def test_insert_type_selects_by_the_entry_that_added_them(half_lora):
    """``insert_type``: the tensors an entry of that type (or of a type
    extending it) added; with ``name``, LoRA's B on a Linear, a Conv2d and
    a ConvModule (its ``conv``), each the ``weight`` of the target's own
    ``lora_B`` module."""
    net = Layers()
    apply_insert(net, [dict(type='LoRA', targets='fc|conv', rank=2),
                       dict(type='HalfLoRA', targets='block', rank=2)])
    table = param_table(net)
    b = [net.fc.lora_B.weight, net.conv.lora_B.weight,
         net.block.conv.lora_B.weight]
    chosen = select(dict(insert_type='LoRA', name=r'.*\.lora_B\..*'), table)
    assert [p.param for p in chosen] == b
    assert _names(dict(insert_type='HalfLoRA'), table) == [
        'block.conv.lora_A.weight', 'block.conv.lora_B.weight']
    assert len(_names(dict(insert_type=['LoRA']), table)) == 6
    assert _names(dict(insert_type='InsertType'), table) == \
        _names(dict(insert_type='LoRA'), table)
    with pytest.raises(SelectorError, match=(
            r"insert_type='Lora' matches none \(closest names: 'LoRA'")):
        select(dict(insert_type='Lora'), table)


def test_insert_type_on_a_model_without_insertions(net):
    with pytest.raises(SelectorError, match=(
            r"insert_type='LoRA' matches none \(no tensor of the model was "
            r"added by insert=\[\.\.\.\]\)")):
        select(dict(insert_type='LoRA'), param_table(net))


def test_not_is_exclude_under_a_name_runner_configs_can_print(net):
    """A Runner logs its config through ``Config.pretty_text``, which writes
    a ``'not'`` key as ``dict(not=...)`` and fails (a keyword passes its
    identifier check): the key is ``exclude``, which prints and reads back,
    and ``'not'`` is an error naming it."""
    table = param_table(net)
    bitfit = ['new', dict(name=r'.*\.bias')]
    assert _names(dict(exclude=bitfit), table) == ['trunk.0.weight',
                                                   'trunk.1.weight']
    with pytest.raises(SyntaxError):
        Config(dict(paramwise_cfg=dict(freeze={'not': bitfit}))).pretty_text
    with pytest.raises(SelectorError, match="the key 'not' is 'exclude'"):
        select({'not': bitfit}, table)
    text = Config(dict(paramwise_cfg=dict(
        freeze=dict(exclude=bitfit)))).pretty_text
    read = Config.fromstring(text, '.py')
    assert read['paramwise_cfg']['freeze']['exclude'] == bitfit
    with pytest.raises(SelectorError, match=r"'exclude': selector \{'name': "
                       r"'haed'\} matches no parameter"):
        select(dict(exclude=dict(name='haed')), table)
