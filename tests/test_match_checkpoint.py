"""tools/match_checkpoint.py: dry run on a real mmdet RetinaNet config."""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tools'))
import match_checkpoint as tool  # noqa: E402

from test_contract import _resnet_detector  # noqa: E402


def _write(tmp_path, name, model):
    """A RetinaNet config inheriting mmdet's, with ``model`` merged in."""
    path = tmp_path / f'{name}.py'
    path.write_text(
        "_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['mmext_init'], "
        'allow_failed_imports=False)\n'
        f'model = {model}\n')
    return str(path)


def _config(tmp_path, ckpt, prefix):
    return _write(
        tmp_path, f'cfg_{prefix or "none"}',
        'dict(backbone=dict(depth=18, init_cfg=dict('
        f"type='Pretrained', checkpoint={ckpt!r}, prefix={prefix!r})),"
        ' neck=dict(in_channels=[64, 128, 256, 512]),'
        ' bbox_head=dict(num_classes=2))')


def _four_channels(tmp_path, ckpt, mode):
    return _write(
        tmp_path, f'four_channels_{mode}',
        'dict(backbone=dict(depth=18, in_channels=4, init_cfg=dict('
        f"type='Pretrained', checkpoint={ckpt!r}, prefix='backbone.', "
        "adapt=[dict(type='InputChannels', keys='conv1.weight', "
        f"mode={mode!r})])), neck=dict(in_channels=[64, 128, 256, 512]))")


def test_dry_run_groups_json_and_exit_status(tmp_path, capsys):
    detector = _resnet_detector()  # ResNet-18, 3 classes
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': detector.state_dict()}, ckpt)
    good = _config(tmp_path, ckpt, 'backbone.')
    assert tool.main([good]) == 0
    text = capsys.readouterr().out
    assert 'backbone <- ' in text and 'model built on meta' in text
    assert '100.0% of parameter elements would load' in text
    assert '  layer{1..4}.{0..1}.conv{1..2}.weight' in text
    assert tool.main([good, '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['loaded_fraction'] == 1.0 and res['missing'] == []

    assert res['adapted'] == []

    bad = _config(tmp_path, ckpt, 'neck.')
    assert tool.main([bad]) == 1
    text = capsys.readouterr().out
    assert "suggestion: prefix='backbone.' would load 100.0%" in text


def test_dry_run_lists_adapted_tensors(tmp_path, capsys):
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    path = _four_channels(tmp_path, ckpt, 'copy')
    assert tool.main([path, '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['adapted'] == [dict(
        key='conv1.weight', transform='InputChannels', partial=True,
        description="InputChannels(mode='copy', channels='3->4')")]
    assert res['mismatched'] == []


def test_dry_run_refuses_a_transform_that_cannot_apply(tmp_path, capsys):
    """Checked on shapes only: the dry run fails as the real load would,
    and the real load fails before any initializer ran."""
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    path = _four_channels(tmp_path, ckpt, 'sum')
    assert tool.main([path]) == 2
    err = capsys.readouterr().err
    assert "error: init_cfg of 'backbone' (Pretrained): InputChannels on " \
        'conv1.weight: checkpoint (64, 3, 7, 7) -> model (64, 4, 7, 7)' in err


def test_dry_run_classes_on_equal_shapes(tmp_path, capsys):
    """Replacing one class of three keeps the shapes: still adapted."""
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    path = _write(
        tmp_path, 'classes',
        'dict(bbox_head=dict(num_classes=3, in_channels=32, '
        'stacked_convs=1, feat_channels=32, anchor_generator=dict('
        'scales_per_octave=1, ratios=[1.0]), init_cfg=dict('
        f"type='Pretrained', checkpoint={ckpt!r}, prefix='bbox_head.', "
        "adapt=[dict(type='Classes', keys=r'retina_cls\\.(weight|bias)', "
        "old_classes=['a', 'b', 'c'], new_classes=['c', 'b', 'z'])])))")
    assert tool.main([path, '--module', 'bbox_head', '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    assert [a['key'] for a in res['adapted']] == [
        'retina_cls.weight', 'retina_cls.bias']
    assert all(a['partial'] for a in res['adapted'])
    assert res['adapted'][0]['description'] == \
        "Classes(classes='2 kept', new=['z'], rows='3 classes')"


def _without_layer4(tmp_path):
    """A detector checkpoint whose backbone lacks layer4 (about a quarter
    of ResNet-18's parameter elements remain under ``backbone.``)."""
    state = {k: v for k, v in _resnet_detector().state_dict().items()
             if not k.startswith('backbone.layer4.')}
    path = str(tmp_path / 'no_layer4.pth')
    torch.save({'state_dict': state}, path)
    return path


def test_dry_run_suggests_only_what_loads_more(tmp_path, capsys):
    """Regression: with prefix='backbone.' set and 25% loading, the dry run
    suggested prefix='backbone.' (and match='suffix') 'would load 25%'."""
    path = _config(tmp_path, _without_layer4(tmp_path), 'backbone.')
    assert tool.main([path, '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 < res['loaded_fraction'] < 0.5
    assert res['suggestions'] == []
    assert tool.main([path]) == 0
    assert 'suggestion:' not in capsys.readouterr().out


def test_dry_run_lists_names_in_module_order(tmp_path, capsys):
    """Regression: names were sorted alphabetically (bn1 before conv1)."""
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    assert tool.main([_config(tmp_path, ckpt, 'backbone.'), '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['loaded'][:3] == ['conv1.weight', 'bn1.weight', 'bn1.bias']
    assert tool.main([_config(tmp_path, ckpt, 'backbone.')]) == 0
    text = capsys.readouterr().out.splitlines()
    start = text.index(f"would load: {len(res['loaded'])}")
    assert text[start + 1] == '  conv1.weight'


def test_dry_run_names_the_model_root(tmp_path, capsys):
    """An entry on the model root: ``module`` stays '' in the JSON, and
    ``module_label`` and the text name the root by its class."""
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    path = _write(
        tmp_path, 'root',
        f"dict(init_cfg=dict(type='Pretrained', checkpoint={ckpt!r}), "
        'backbone=dict(depth=18, init_cfg=None), '
        'neck=dict(in_channels=[64, 128, 256, 512]), '
        'bbox_head=dict(num_classes=3))')
    assert tool.main([path, '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['module'] == ''
    assert res['module_label'] == 'the model root (RetinaNet)'
    tool.main([path])
    assert capsys.readouterr().out.startswith(
        f'the model root (RetinaNet) <- {ckpt} (')


def test_dry_run_without_an_entry_exits_2(tmp_path, capsys):
    """Regression: a --module without Pretrained raised SystemExit (1)."""
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    path = _config(tmp_path, ckpt, 'backbone.')
    assert tool.main([path, '--module', 'neck']) == 2
    assert "error: no Pretrained entry in the init_cfg of --module 'neck'" \
        in capsys.readouterr().err
    assert tool.main([path, '--module', 'nek']) == 2
    assert "error: --module 'nek': no such submodule of RetinaNet" in \
        capsys.readouterr().err
