"""tools/check_function_preserving.py on real mmdet/mmseg backbones."""
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tools'))
import check_function_preserving as tool  # noqa: E402

SWIN = dict(pretrain_img_size=64, embed_dims=16, depths=(1, 1),
            num_heads=(1, 2), strides=(4, 2), out_indices=(0, 1),
            window_size=4)
CASES = {
    'mmdet_resnet': ('mmdet', 'ResNet', 'ResNetInserted', dict(depth=18)),
    'mmseg_swin': ('mmseg', 'SwinTransformer', 'SwinInserted', SWIN),
}


def _write(tmp_path, name, scope, model, imports):
    path = tmp_path / f'{name}.py'
    path.write_text(
        f'default_scope = {scope!r}\n'
        f'custom_imports = dict(imports={imports!r}, '
        'allow_failed_imports=False)\n'
        f'model = {model!r}\n')
    return str(path)


def _configs(tmp_path, case, zero_up=True):
    scope, stock, inserted, args = CASES[case]
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(scope)
    source = MODELS.build(dict(type=stock, **args))
    with torch.no_grad():
        for t in source.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.normal_(0, 0.1).abs_()  # running_var must stay positive
    ckpt = str(tmp_path / 'pretrained.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in
                               source.state_dict().items()}}, ckpt)
    pretrained = dict(type='Pretrained', checkpoint=ckpt, prefix='backbone.',
                      init_missing=dict(type='Identity', layer='Conv2d'))
    if scope == 'mmseg':  # Swin loads itself: it takes the 'backbone.' keys
        pretrained.pop('prefix')
    imports = ['mmext_init', 'inserted_models']
    ref = _write(tmp_path, 'reference', scope,
                 dict(type=stock, init_cfg=pretrained, **args), imports)
    new = _write(tmp_path, 'inserted', scope,
                 dict(type=inserted, zero_up=zero_up, init_cfg=pretrained,
                      **args), imports)
    return new, ref


@pytest.mark.parametrize('case', sorted(CASES))
def test_inserted_modules_preserve_the_function(tmp_path, case, capsys):
    sys.path.insert(0, HERE)
    new, ref = _configs(tmp_path, case)
    code = tool.main([new, '--reference', ref, '--input-shape', '2', '3',
                      '64', '64'])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'function preserved' in out
    diffs = [float(line.rsplit(' ', 1)[1]) for line in out.splitlines()
             if 'max abs difference' in line]
    assert diffs and max(diffs) <= 1e-6


@pytest.mark.parametrize('case', sorted(CASES))
def test_non_zero_adapters_are_detected(tmp_path, case, capsys):
    sys.path.insert(0, HERE)
    new, ref = _configs(tmp_path, case, zero_up=False)
    assert tool.main([new, '--reference', ref, '--input-shape', '1', '3',
                      '64', '64']) == 1
    assert 'function CHANGED' in capsys.readouterr().out


def test_input_shape_from_config():
    from mmengine.config import Config
    cfg = Config(dict(model=dict(), test_pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(128, 96))]))
    assert tool.input_shape_from_cfg(cfg) == (1, 3, 96, 128)
    assert tool.input_shape_from_cfg(Config(dict(
        model=dict(), crop_size=(64, 32)))) == (1, 3, 64, 32)
