"""``mmext-check`` (mmext_init.tools.check_function_preserving) on real
mmdet/mmseg backbones with
inserted adapters (``Zero`` up projection) and serial ``Identity`` convs
(test-only classes in tests/inserted_models.py)."""
import json
import os
import sys

import pytest
import torch
from mmengine.logging import MMLogger

# MMEngine's logger keeps the sys.stdout of its creation: create it now,
# not inside a capsys test whose stream is closed afterwards.
MMLogger.get_current_instance()

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # inserted_models, imported by the configs
from mmext_init.tools import check_function_preserving as tool  # noqa: E402

SWIN = dict(pretrain_img_size=64, embed_dims=32, depths=(1, 1),
            num_heads=(1, 2), patch_size=4, strides=(4, 2), window_size=4,
            out_indices=(0, 1))
CASES = {
    'mmdet_resnet': ('mmdet', 'ResNet', 'ResNetInserted', dict(depth=18)),
    'mmseg_swin': ('mmseg', 'SwinTransformer', 'SwinInserted', SWIN),
}


def _write(tmp_path, name, scope, model):
    path = tmp_path / f'{name}.py'
    path.write_text(
        f'default_scope = {scope!r}\n'
        "custom_imports = dict(imports=['mmext_init', 'inserted_models'], "
        'allow_failed_imports=False)\n'
        f'model = {model!r}\n')
    return str(path)


def _checkpoint(tmp_path, scope, stock, args):
    """Save a reference model's state_dict in tmp_path: its random
    constructor weights, and BatchNorm/LayerNorm statistics, affine
    parameters and biases made non-trivial (positive: running_var)."""
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(scope)
    reference = MODELS.build(dict(type=stock, **args))
    with torch.no_grad():
        for t in reference.state_dict().values():
            if t.is_floating_point() and t.dim() == 1:
                t.copy_(torch.rand_like(t) + 0.5)
    path = str(tmp_path / 'pretrained.pth')
    torch.save({'state_dict': reference.state_dict()}, path)
    return path


def _configs(tmp_path, case, **inserted_args):
    scope, stock, inserted, args = CASES[case]
    pretrained = dict(type='Pretrained',
                      checkpoint=_checkpoint(tmp_path, scope, stock, args))
    if inserted_args.get('serial') == 'plain':
        pretrained['init_missing'] = dict(type='Identity', layer='Conv2d')
    ref = _write(tmp_path, 'reference', scope,
                 dict(type=stock, init_cfg=pretrained, **args))
    new = _write(tmp_path, 'inserted', scope,
                 dict(type=inserted, init_cfg=pretrained, **inserted_args,
                      **args))
    return new, ref


def _diffs(out):
    return [float(line.rsplit(' ', 1)[1]) for line in out.splitlines()
            if 'max abs difference' in line]


@pytest.mark.parametrize('case', sorted(CASES))
def test_zero_adapters_and_identity_serial_convs_preserve_the_function(
        tmp_path, case, capsys):
    new, ref = _configs(tmp_path, case)
    code = tool.main([new, '--reference', ref, '--input-shape', '2', '3',
                      '64', '64'])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'function preserved' in out
    diffs = _diffs(out)
    assert len(diffs) == (4 if case == 'mmdet_resnet' else 2), out
    assert max(diffs) <= 1e-6


@pytest.mark.parametrize('case', sorted(CASES))
def test_adapters_not_zero_initialized_are_detected(tmp_path, case, capsys):
    new, ref = _configs(tmp_path, case, zero_up=False)
    assert tool.main([new, '--reference', ref, '--input-shape', '1', '3',
                      '64', '64']) == 1
    out = capsys.readouterr().out
    assert 'function CHANGED' in out and max(_diffs(out)) > 1e-3


def test_json_cfg_options_and_input_errors(tmp_path, capsys):
    """``--json -``: the result alone on stdout, the text on stderr;
    ``--cfg-options`` reach both configs (both backbones lose their last
    stage: 3 outputs); a missing config is ``mmext-check: error: ...``."""
    new, ref = _configs(tmp_path, 'mmdet_resnet')
    argv = [new, '--reference', ref, '--input-shape', '1', '3', '32', '32']
    assert tool.main(argv + ['--json', '-', '--cfg-options',
                             'model.out_indices=[0,1,2]']) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert (data['preserved'], data['atol'], data['module']) == (
        True, 1e-5, 'the model')
    assert [o['shape'][1] for o in data['outputs']] == [64, 128, 256]
    assert data['max_abs_difference'] == max(_diffs(captured.err))
    assert 'function preserved' in captured.err
    missing = str(tmp_path / 'missing.py')
    assert tool.main([new, '--reference', missing]) == 2
    assert capsys.readouterr().err.endswith(
        f'mmext-check: error: {missing}: no such config file\n')


def test_serial_identity_through_init_missing(tmp_path, capsys):
    new, ref = _configs(tmp_path, 'mmdet_resnet', serial='plain')
    assert tool.main([new, '--reference', ref, '--input-shape', '1', '3',
                      '32', '32']) == 0, capsys.readouterr().out


def _retinanet(backbone, **extra):
    return dict(
        backbone=backbone,
        data_preprocessor=dict(type='DetDataPreprocessor'),
        neck=dict(type='FPN', in_channels=[64, 128, 256, 512],
                  out_channels=32, num_outs=5),
        bbox_head=dict(
            type='RetinaHead', num_classes=3, in_channels=32,
            feat_channels=32, bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
            anchor_generator=dict(
                type='AnchorGenerator', octave_base_scale=4,
                scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                strides=[8, 16, 32, 64, 128])), **extra)


def test_detector_module_choice_and_atol(tmp_path, capsys):
    """A whole RetinaNet (checkpoint at the root, FPN included): default
    ``backbone``, ``--module tensor`` (the whole model, ``mode='tensor'``),
    ``--module extract_feat`` (backbone + FPN), a dotted submodule,
    ``--atol``, a wrong ``--module``, and an input it cannot take."""
    ckpt = _checkpoint(tmp_path, 'mmdet', 'RetinaNet',
                       _retinanet(dict(type='ResNet', depth=18)))
    pretrained = dict(type='Pretrained', checkpoint=ckpt)
    ref = _write(tmp_path, 'ref_det', 'mmdet', _retinanet(
        dict(type='ResNet', depth=18), type='RetinaNet', init_cfg=pretrained))
    new = _write(tmp_path, 'new_det', 'mmdet', _retinanet(
        dict(type='ResNetInserted', depth=18), type='RetinaNet',
        init_cfg=pretrained))
    changed = _write(tmp_path, 'changed_det', 'mmdet', _retinanet(
        dict(type='ResNetInserted', depth=18, zero_up=False),
        type='RetinaNet', init_cfg=pretrained))
    shape = ['--input-shape', '1', '3', '64', '64']
    assert tool.main([new, '--reference', ref] + shape) == 0
    out = capsys.readouterr().out
    assert len(_diffs(out)) == 4  # default: the backbone stages
    assert out.rstrip().endswith('through backbone')
    assert tool.main([new, '--reference', ref, '--module', 'tensor'] +
                     shape) == 0
    out = capsys.readouterr().out  # the whole model, the heads too
    assert len(_diffs(out)) == 10  # scores and boxes of 5 levels
    assert "through the whole model (mode='tensor')" in out
    assert tool.main([new, '--reference', ref, '--module', 'extract_feat'] +
                     shape) == 0
    out = capsys.readouterr().out
    assert len(_diffs(out)) == 5 and max(_diffs(out)) <= 1e-6  # FPN levels
    assert tool.main([new, '--reference', ref, '--module', 'backbone.layer1',
                      '--input-shape', '1', '64', '16', '16']) == 0
    assert '(1, 64, 16, 16)' in capsys.readouterr().out
    assert tool.main([changed, '--reference', ref, '--module',
                      'extract_feat'] + shape) == 1
    worst = max(_diffs(capsys.readouterr().out))
    assert worst > 1e-3
    assert tool.main([changed, '--reference', ref, '--module', 'extract_feat',
                      '--atol', str(2 * worst)] + shape) == 0
    assert tool.main([new, '--reference', ref, '--module', 'nope'] +
                     shape) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "mmext-check: error: --module 'nope' is neither a submodule nor a "
        'method of RetinaNet')
    # an input the detector cannot take: exit 2, naming the options
    assert tool.main([new, '--reference', ref, '--input-shape', '1',
                      '64']) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1].startswith(
        'mmext-check: error: the input (1, 64) '
        '(--input-shape) does not run through backbone: ')
    assert 'Give --input-shape with the shape the model takes' in \
        captured.err and '--module' in captured.err


def test_input_shape_from_config():
    from mmengine.config import Config
    cfg = Config(dict(model=dict(), test_pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(128, 96))]))
    assert tool.input_shape_from_cfg(cfg) == (1, 3, 96, 128)
    assert tool.input_shape_from_cfg(Config(dict(
        model=dict(), crop_size=(64, 32)))) == (1, 3, 64, 32)
    assert tool.input_shape_from_cfg(Config(dict(
        model=dict(data_preprocessor=dict(size=(48, 40)))))) == (1, 3, 48, 40)
    assert tool.input_shape_from_cfg(Config(dict(model=dict()))) == (
        1, 3, 224, 224)
