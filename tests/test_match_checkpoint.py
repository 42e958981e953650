"""``mmext-match`` (mmext_init.tools.match_checkpoint): dry run on a real
mmdet RetinaNet config."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from test_contract import _resnet_detector

from mmext_init import read_checkpoint
from mmext_init.tools import match_checkpoint as tool
from mmext_init.training.report import (TRAINABLE_FILE, format_trainable,
                                        group_lines)

HERE = os.path.dirname(os.path.abspath(__file__))


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
    assert tool.main([good, '--json', '-']) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['loaded_fraction'] == 1.0 and res['missing'] == []

    assert res['adapted'] == []

    bad = _config(tmp_path, ckpt, 'neck.')
    assert tool.main([bad]) == 1
    text = capsys.readouterr().out
    assert "suggestion: prefix='backbone.' would load 100.0%" in text


def test_cfg_options_json_file_and_input_errors(tmp_path, capsys):
    """``--cfg-options`` is merged into the config (the prefix fixed from
    the command line), ``--json PATH`` writes the result next to the text,
    and a missing config, a bad ``--json`` folder and a bad entry are one
    ``mmext-match: error: ...`` line on stderr with exit status 2."""
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    bad = _config(tmp_path, ckpt, 'neck.')
    out = str(tmp_path / 'res.json')
    assert tool.main([bad, '--json', out, '--cfg-options',
                      'model.backbone.init_cfg.prefix=backbone.']) == 0
    captured = capsys.readouterr()
    assert '100.0% of parameter elements would load' in captured.out
    with open(out) as f:
        res = json.load(f)
    assert res['loaded_fraction'] == 1.0 and res['mapping'] == \
        "prefix='backbone.'"
    missing = str(tmp_path / 'nope.py')
    assert tool.main([missing]) == 2
    assert capsys.readouterr().err == \
        f'mmext-match: error: {missing}: no such config file\n'
    assert tool.main([bad, '--json', str(tmp_path / 'no' / 'r.json')]) == 2
    assert capsys.readouterr().err == \
        f"mmext-match: error: --json {tmp_path / 'no' / 'r.json'}: no such " \
        'directory\n'
    with pytest.raises(SystemExit) as usage:  # argparse: same format
        tool.main([bad, '--nope'])
    assert usage.value.code == 2
    assert 'mmext-match: error: unrecognized arguments: --nope' in \
        capsys.readouterr().err


def test_dry_run_lists_adapted_tensors(tmp_path, capsys):
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    path = _four_channels(tmp_path, ckpt, 'copy')
    assert tool.main([path, '--json', '-']) == 0
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
    assert "mmext-match: error: init_cfg of 'backbone' (Pretrained): " \
        'InputChannels on conv1.weight: checkpoint (64, 3, 7, 7) -> model ' \
        '(64, 4, 7, 7)' in err


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
    assert tool.main([path, '--module', 'bbox_head', '--json', '-']) == 0
    res = json.loads(capsys.readouterr().out)
    # RetinaHead's init_weights override leaves the entry to super(): no
    # own loader, its prefix and adapt applied as in the run
    assert res['own_loader'] is None and res['warnings'] == []
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
    assert tool.main([path, '--json', '-']) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 < res['loaded_fraction'] < 0.5
    assert res['suggestions'] == []
    assert tool.main([path]) == 0
    assert 'suggestion:' not in capsys.readouterr().out


def test_dry_run_lists_names_in_module_order(tmp_path, capsys):
    """Regression: names were sorted alphabetically (bn1 before conv1)."""
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    assert tool.main([_config(tmp_path, ckpt, 'backbone.'), '--json',
                      '-']) == 0
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
    assert tool.main([path, '--json', '-']) == 0
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
    assert 'mmext-match: error: no Pretrained entry in the init_cfg of ' \
        "--module 'neck'" in capsys.readouterr().err
    assert tool.main([path, '--module', 'nek']) == 2
    assert "mmext-match: error: --module 'nek': no such submodule of " \
        'RetinaNet' in capsys.readouterr().err


# --optim: the trainable report before any weight is loaded.

REPO = os.path.dirname(HERE)
FREEZE_TINY = os.path.join(
    REPO, 'configs', 'mmdet', 'retinanet_r18_adapters_freeze_tiny.py')
STOCK_R18 = 'checkpoints/retinanet_r18_stock_tiny.pth'
GROUP = re.compile(r'  group \d+: lr=(\S+) weight_decay=\S+'
                   r'(?: depth (\S+))?, \d+ tensors: ')


@pytest.fixture(scope='module')
def tiny_r18_dir(tmp_path_factory) -> str:
    """Tiny COCO data and the stock Runner checkpoint of the tiny RetinaNet
    (tools/make_tiny_data.py), in the e2e tests' ``<basetemp>/tiny``: what
    they made is reused, what is missing there is made."""
    path = tmp_path_factory.getbasetemp() / 'tiny'
    path.mkdir(exist_ok=True)
    subprocess.run([sys.executable, os.path.join(REPO, 'tools',
                                                 'make_tiny_data.py'),
                    '--out-dir', str(path), '--only', 'ckpt',
                    '--checkpoint', os.path.basename(STOCK_R18)],
                   check=True, capture_output=True)
    return str(path)


def _start_training(config: str, work_dir: str) -> Runner:
    """A real Runner on ``config`` (one iteration, no checkpoint saved:
    neither changes the optimizer); the trainable report is written when
    the train loop starts."""
    cfg = Config.fromfile(config)
    cfg.work_dir = work_dir
    cfg.experiment_name = f'optim_{abs(hash(work_dir))}'  # own logger
    cfg.train_cfg.max_iters = 1
    cfg.default_hooks.checkpoint = None
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def _optim_config(tmp_path, ckpt, paramwise_cfg):
    """A RetinaNet whose ResNet-18 backbone (every stage trainable) loads
    ``ckpt``, trained with ``ProvenanceOptimWrapperConstructor``, SGD at
    lr 0.02."""
    path = _write(
        tmp_path, 'optim',
        'dict(backbone=dict(depth=18, frozen_stages=-1, init_cfg=dict('
        f"type='Pretrained', checkpoint={ckpt!r}, prefix='backbone.')),"
        ' neck=dict(in_channels=[64, 128, 256, 512]),'
        ' bbox_head=dict(num_classes=2))')
    with open(path, 'a') as f:
        f.write("optim_wrapper = dict(constructor="
                "'ProvenanceOptimWrapperConstructor', optimizer=dict("
                f'lr=0.02), paramwise_cfg={paramwise_cfg!r})\n')
    return path


def _dry_and_real(config, work_dir, capsys):
    """``--optim --json -``'s report, the report of a real Runner starting
    to train on ``config`` (its ``trainable_params.json``) and the Runner,
    once the text and the logged report are checked against each other."""
    assert tool.main([config, '--optim', '--json', '-']) == 0
    dry = json.loads(capsys.readouterr().out)['trainable']
    assert tool.main([config, '--optim']) == 0
    text = capsys.readouterr().out.splitlines()
    runner = _start_training(config, work_dir)
    capsys.readouterr()  # the Runner's log
    with open(os.path.join(runner.log_dir, TRAINABLE_FILE)) as f:
        real = json.load(f)
    with open(os.path.join(runner.log_dir, f'{runner.timestamp}.log')) as f:
        log = f.read()
    assert all(line in log for line in group_lines(dry))
    assert group_lines(dry) == group_lines(real)
    assert dry['frozen'] == real['frozen']
    real_text = format_trainable(real).splitlines()  # as it was logged
    groups = real_text.index(f"parameter groups ({real['optimizer']}):")
    assert text[-len(real_text) + groups:] == real_text[groups:]
    return dry, real, runner


def test_optim_dry_run_is_the_report_training_starts_with(
        tiny_r18_dir, tmp_path, monkeypatch, capsys):
    """The freeze example: the dry run and a real Runner starting to train
    on the same config show the same groups and frozen names, and the
    frozen checkpoint tensors are those the backbone loads."""
    monkeypatch.chdir(tiny_r18_dir)  # the config's paths are relative
    dry, real, runner = _dry_and_real(FREEZE_TINY, str(tmp_path), capsys)
    assert len(dry['groups']) == 1 and dry['groups'][0]['lr'] == 0.05
    state = read_checkpoint(STOCK_R18)[0]['state_dict']
    params = {n for n, _ in runner.model.named_parameters()}
    loads = [k for k in state if k.startswith('backbone.') and k in params]
    assert len(loads) == 60  # ResNet-18 (the adapters are new)
    assert len(dry['frozen']) == len(loads)
    for data in (dry, real):
        counts = data['counts']['checkpoint']
        assert counts['frozen']['tensors'] == len(loads)
        assert counts['trainable']['tensors'] == 0
    assert dry['counts']['new']['trainable']['tensors'] == sum(
        c['trainable']['tensors'] for c in real['counts'].values()) == 36

    monkeypatch.chdir(tmp_path)  # no checkpoints/ here: --checkpoint it is
    assert tool.main([FREEZE_TINY, '--optim', '--json', '-', '--checkpoint',
                      os.path.join(tiny_r18_dir, STOCK_R18)]) == 0
    assert json.loads(capsys.readouterr().out)['trainable'] == dry


def test_optim_dry_run_depths_are_the_real_runs(tiny_r18_dir, tmp_path,
                                                monkeypatch, capsys):
    """The tiny example fine-tuned whole, with layer decay on the backbone:
    the dry run's depths and lrs are those of the real start."""
    monkeypatch.chdir(tiny_r18_dir)
    config = tmp_path / 'layer_decay.py'
    config.write_text(
        f'_base_ = {FREEZE_TINY!r}\n'
        'optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, '
        "norm_decay_mult=0.0, layer_decay=dict(rate=0.8, select=dict("
        "name=r'^backbone\\..*'))))\n")
    dry, _, _ = _dry_and_real(str(config), str(tmp_path / 'run'), capsys)
    assert dry['frozen'] == []
    depths = sorted({d for g in dry['groups'] for d in g['depth']})
    assert depths == list(range(12))  # stem, 8 blocks and 3 adapters
    stem = dry['groups'][0]
    assert (stem['names'], stem['depth']) == (['backbone.conv1.weight'], [0])
    assert stem['lr'] == pytest.approx(0.005 * 0.8 ** 12)


def test_optim_dry_run_shows_the_layer_decay_depths(tmp_path, capsys):
    """ResNet-18 under layer decay: stem depth 0, blocks layer1.0 ..
    layer4.1 depths 1..8 (N = 8); lr = base_lr * rate ** (N + 1 - depth)."""
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    path = _optim_config(tmp_path, ckpt, dict(layer_decay=dict(
        rate=0.5, select=dict(name=r'^backbone\..*'))))
    assert tool.main([path, '--optim']) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith('  group ')]
    found = [GROUP.match(line).groups() for line in lines]
    depths = {int(d): float(lr) for lr, d in found if d is not None}
    assert sorted(depths) == list(range(9))
    for depth, lr in depths.items():
        assert lr == pytest.approx(0.02 * 0.5 ** (8 + 1 - depth), rel=1e-5)
    assert [float(lr) for lr, d in found if d is None] == [0.02]  # neck, head
    assert 'depth 0, 3 tensors: backbone.conv1.weight, ' \
        'backbone.bn1.{weight,bias}' in '\n'.join(lines)

    assert tool.main([path, '--optim', '--json', '-']) == 0
    groups = json.loads(capsys.readouterr().out)['trainable']['groups']
    for group in groups:
        if group['depth']:
            assert group['lr'] == pytest.approx(
                0.02 * 0.5 ** (9 - group['depth'][0]))
            assert group['depth'] == [group['depth'][0]]
            assert all(n.startswith('backbone.') for n in group['names'])


def test_optim_dry_run_names_a_selector_matching_nothing(tmp_path, capsys):
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    path = _optim_config(tmp_path, ckpt,
                         dict(freeze=dict(name=r'^backbone\.layer9')))
    assert tool.main([path, '--optim']) == 2
    captured = capsys.readouterr()
    assert "mmext-match: error: paramwise_cfg.freeze: selector {'name': " \
        "'^backbone\\\\.layer9'} matches no parameter" in captured.err
    assert 'trainable parameters' not in captured.out
    with open(path, 'a') as f:
        f.write("optim_wrapper = dict(_delete_=True, constructor="
                "'ProvenanceOptimWrapperConstructor')\n")
    assert tool.main([path, '--optim']) == 2
    assert 'mmext-match: error: --optim: optim_wrapper has no optimizer ' \
        'config' in \
        capsys.readouterr().err


def test_optim_dry_run_with_the_stock_constructor(tmp_path, capsys):
    """Without ProvenanceOptimWrapperConstructor: MMEngine's default
    constructor's groups (it keeps parameters without gradients in them),
    nothing frozen by a selector; ResNet's frozen_stages are listed."""
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': _resnet_detector().state_dict()}, ckpt)
    path = _config(tmp_path, ckpt, 'backbone.')
    assert tool.main([path, '--optim', '--json', '-']) == 0
    data = json.loads(capsys.readouterr().out)['trainable']
    assert data['optimizer'] == 'SGD'
    assert len(data['frozen']) == 15 and all(  # ResNet's frozen_stages=1
        n.startswith(('backbone.conv1.', 'backbone.bn1.', 'backbone.layer1.'))
        for n in data['frozen'])
    assert [(g['lr'], g['weight_decay'], g['depth']) for g in
            data['groups']] == [(0.01, 0.0001, [])]
    counts = data['counts']['checkpoint']  # frozen: frozen_stages=1
    assert (counts['trainable']['tensors'], counts['frozen']['tensors']) \
        == (45, 15)
    assert len(data['groups'][0]['names']) == 96  # all, as stock builds it
    assert tool.main([path, '--optim']) == 0
    assert 'frozen: backbone.conv1.weight, ' in capsys.readouterr().out
