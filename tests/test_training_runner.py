"""The training policies through a real MMEngine Runner: an mmdet RetinaNet whose ResNet
backbone (with inserted adapters) is loaded from a checkpoint, trained a
few SGD iterations with ``ProvenanceOptimWrapperConstructor``."""
import json
import os

import pytest
import torch
from mmengine.hooks import Hook

from mmext_init.errors import InitConfigError
from mmext_init.training.report import TRAINABLE_FILE
from retinanet_runs import model_cfg, retinanet_runner, write_backbone_ckpt


@pytest.fixture(scope='module')
def backbone_ckpt(tmp_path_factory) -> str:
    return write_backbone_ckpt(
        str(tmp_path_factory.mktemp('issue15') / 'r18.pth'))


def _runner(work_dir: str, ckpt: str, paramwise_cfg: dict):
    return retinanet_runner(work_dir, ckpt, paramwise_cfg)


def test_freeze_loaded_keeps_the_backbone_bit_identical(tmp_path,
                                                       backbone_ckpt):
    ckpt = torch.load(backbone_ckpt)['state_dict']
    runner = _runner(str(tmp_path / 'freeze'), backbone_ckpt,
                     dict(freeze='loaded'))
    runner.train()
    model = runner.model
    state = model.state_dict()
    for key, value in ckpt.items():  # every loaded tensor, BN stats too
        assert torch.equal(state[f'backbone.{key}'], value), key
    for name, p in model.named_parameters():
        assert p.requires_grad == (name[len('backbone.'):] not in ckpt), name
    for i in range(3):  # adapters (up: zero-initialized) trained
        assert torch.count_nonzero(
            state[f'backbone.adapters.{i}.up.weight']) > 0
    assert model.backbone.bn1.training is False  # after model.train()
    groups = runner.optim_wrapper.optimizer.param_groups
    trained = {id(p) for g in groups for p in g['params']}
    assert not trained & {id(model.backbone.conv1.weight)}
    report = json.load(open(os.path.join(runner.log_dir, TRAINABLE_FILE)))
    counts = report['counts']
    assert counts['checkpoint']['trainable']['tensors'] == 0
    assert counts['checkpoint']['frozen']['tensors'] == sum(
        1 for k in ckpt if not k.endswith(
            ('running_mean', 'running_var', 'num_batches_tracked')))
    assert len(report['groups']) == 1


def test_rules_set_the_group_lr_and_decay(tmp_path, backbone_ckpt):
    runner = _runner(str(tmp_path / 'rules'), backbone_ckpt, dict(
        norm_decay_mult=0.0,
        rules=[dict(select='new', lr_mult=10.0),
               dict(select=dict(name=r'.*adapters\.\d+\.up\..*'), lr_mult=5.0,
                    decay_mult=2.0)]))
    runner.train()
    model = runner.model
    groups = runner.optim_wrapper.optimizer.param_groups
    options = {id(p): (g['lr'], g['weight_decay'])
               for g in groups for p in g['params']}
    assert len(options) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        lr, wd = options[id(p)]
        loaded = name.startswith('backbone.') and 'adapters' not in name \
            and 'serial' not in name
        norm = 'bn' in name or 'downsample.1' in name
        if 'adapters' in name and '.up.' in name:
            assert (lr, wd) == (pytest.approx(0.05), pytest.approx(2e-4))
        elif loaded:
            assert lr == pytest.approx(0.01), name
            assert wd == (0.0 if norm else pytest.approx(1e-4)), name
        else:
            assert lr == pytest.approx(0.1), name
    text = open(runner.logger.handlers[-1].baseFilename).read() \
        if hasattr(runner.logger.handlers[-1], 'baseFilename') else ''
    assert 'mmext_init: trainable parameters of RetinaNet' in text


def test_plan_and_ledger_disagreeing_is_an_error(tmp_path, backbone_ckpt,
                                                 save_ckpt):
    runner = _runner(str(tmp_path / 'differ'), backbone_ckpt,
                     dict(freeze='loaded'))
    other = save_ckpt({'conv1.weight': torch.zeros(64, 3, 7, 7)})

    class SwapCheckpoint(Hook):
        """What init_weights loads changes after the optimizer is built."""

        def before_run(self, runner) -> None:
            backbone = runner.model.backbone
            backbone.init_cfg = dict(backbone.init_cfg, checkpoint=other,
                                     min_loaded=0.0, on_missing='ignore')

    runner.register_hook(SwapCheckpoint())
    with pytest.raises(InitConfigError, match='planned as loaded, not '
                       r'loaded: backbone\.'):
        runner.train()


@pytest.mark.parametrize('stage, frozen', [(1, True), (2, False)])
def test_inserted_into_a_frozen_stage_is_an_error(tmp_path, backbone_ckpt,
                                                  stage, frozen):
    """ResNet's ``frozen_stages=1`` re-freezes stage 1 in ``train()``, an
    adapter inserted into it included, after the optimizer took it: an
    error before the first iteration, naming it and the setting. Inserted
    after the frozen stage, it trains."""
    model = model_cfg(backbone_ckpt)
    model['backbone'].update(type='ResNet', frozen_stages=1)
    model['insert'] = [dict(type='Adapter', targets=rf'backbone\.layer{stage}',
                            reduction=4)]
    runner = retinanet_runner(str(tmp_path / f'stage{stage}'), backbone_ckpt,
                              dict(freeze='loaded'), iters=1, lr=0.001,
                              model=model)
    adapter = f'backbone.layer{stage}.adapter'
    if not frozen:
        runner.train()
        assert torch.count_nonzero(
            runner.model.state_dict()[f'{adapter}.up.weight']) > 0
        return
    with pytest.raises(InitConfigError) as error:
        runner.train()
    assert str(error.value) == (
        "4 parameters the optimizer trains are frozen by 'backbone' (ResNet, "
        'frozen_stages=1) when the model enters train(), so they would '
        f'never change: {adapter}.{{down,up}}.{{weight,bias}}. Insert after '
        'the frozen stages, or set frozen_stages=-1 and freeze with '
        "paramwise_cfg.freeze (e.g. freeze='loaded').")
    assert runner.iter == 0


def test_example_config_declares_the_keys():
    from mmengine.config import Config  # only this test reads a config
    cfg = Config.fromfile(
        'configs/mmdet/retinanet_r18_adapters_freeze_tiny.py')
    wrapper = cfg.optim_wrapper
    assert wrapper.constructor == 'ProvenanceOptimWrapperConstructor'
    assert wrapper.paramwise_cfg['freeze'] == 'loaded'  # .freeze: addict's
    assert wrapper.optimizer.lr == 0.005  # from the base config
    assert 'mmext_init' in cfg.custom_imports.imports
