"""Issue 15 through a real MMEngine Runner: an mmdet RetinaNet whose ResNet
backbone (with inserted adapters) is loaded from a checkpoint, trained a
few SGD iterations with ``ProvenanceOptimWrapperConstructor``."""
import json
import os

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.dataset import pseudo_collate
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.structures import InstanceData
from torch.utils.data import DataLoader

import inserted_models  # noqa: F401  (registers ResNetInserted)
from mmext_init.errors import InitConfigError
from mmext_init.training.report import TRAINABLE_FILE
from toy_models import tiny_retinanet_cfg


def _sample(i: int) -> dict:
    sample = DetDataSample(metainfo=dict(
        img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64),
        scale_factor=(1.0, 1.0), batch_input_shape=(64, 64)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[4.0 + i, 8.0, 40.0, 44.0 - i]]),
        labels=torch.tensor([i % 3]))
    gen = torch.Generator().manual_seed(i)
    return dict(inputs=torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8,
                                     generator=gen), data_samples=sample)


@pytest.fixture(scope='module')
def backbone_ckpt(tmp_path_factory) -> str:
    """A 'pretrained' ResNet-18 (BN statistics not at their defaults)."""
    init_default_scope('mmdet')
    backbone = MODELS.build(dict(type='ResNet', depth=18))
    backbone.init_weights()
    state = backbone.state_dict()
    for key, value in state.items():
        if key.endswith(('running_mean', 'running_var')):
            state[key] = value + torch.rand_like(value)
    path = tmp_path_factory.mktemp('issue15') / 'r18.pth'
    torch.save({'state_dict': state}, path)
    return str(path)


def _model_cfg(ckpt: str) -> dict:
    cfg = tiny_retinanet_cfg(init_cfg=dict(type='Pretrained',
                                           checkpoint=ckpt))
    cfg['backbone']['type'] = 'ResNetInserted'
    cfg['train_cfg'] = dict(
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                      min_pos_iou=0, ignore_iof_thr=-1),
        sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1,
        debug=False)
    return cfg


def _runner(work_dir: str, ckpt: str, paramwise_cfg: dict) -> Runner:
    data = [_sample(i) for i in range(4)]
    return Runner(
        model=_model_cfg(ckpt), work_dir=work_dir,
        train_dataloader=DataLoader(data, batch_size=2,
                                    collate_fn=pseudo_collate),
        optim_wrapper=dict(
            constructor='ProvenanceOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=0.01, momentum=0.9,
                           weight_decay=1e-4),
            paramwise_cfg=paramwise_cfg),
        train_cfg=dict(by_epoch=False, max_iters=3),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=None),
        default_scope='mmdet', experiment_name=os.path.basename(work_dir))


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
               dict(select=dict(name=r'adapters\.\d+\.up'), lr_mult=5.0,
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


def test_example_config_declares_the_keys():
    from mmengine.config import Config  # only this test reads a config
    cfg = Config.fromfile(
        'configs/mmdet/retinanet_r18_adapters_freeze_tiny.py')
    wrapper = cfg.optim_wrapper
    assert wrapper.constructor == 'ProvenanceOptimWrapperConstructor'
    assert wrapper.paramwise_cfg['freeze'] == 'loaded'  # .freeze: addict's
    assert wrapper.optimizer.lr == 0.005  # from the base config
    assert 'mmext_init' in cfg.custom_imports.imports
