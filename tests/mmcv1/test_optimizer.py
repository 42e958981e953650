"""``ProvenanceOptimizerConstructor`` through mmcv 1.x's
``build_optimizer``: freezing and lr rules by provenance."""
import pytest
import torch
from mmcls.models import ResNet
from mmcv.parallel import MMDataParallel
from mmcv.runner import build_optimizer

from mmext_init.errors import InitConfigError
from mmcls_models import LORA_LAST_CONV, classifier


def _model(tmp_path):
    path = str(tmp_path / 'r18.pth')
    torch.save({'state_dict': ResNet(depth=18).state_dict()}, path)
    model = classifier(path, LORA_LAST_CONV)
    model.init_weights()
    return model


def _lrs(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g['lr'] for g in optimizer.param_groups
            for p in g['params']}


def test_freeze_loaded_and_rules_by_insert_type(tmp_path):
    model = _model(tmp_path)
    optimizer = build_optimizer(MMDataParallel(model), dict(
        type='SGD', lr=0.1, momentum=0.9,
        constructor='ProvenanceOptimizerConstructor',
        paramwise_cfg=dict(
            freeze='loaded', custom_keys={'head': dict(lr_mult=0.5)},
            rules=[dict(select=dict(insert_type='LoRA'), lr_mult=10)])))
    lrs = _lrs(optimizer, model)
    assert not model.backbone.conv1.weight.requires_grad
    assert all(not n.startswith('backbone.') or '.lora_' in n for n in lrs)
    lora = [n for n in lrs if '.lora_' in n]
    assert len(lora) == 2 and all(lrs[n] == pytest.approx(1.0) for n in lora)
    assert lrs['head.fc.weight'] == pytest.approx(0.05)


def test_a_selector_matching_nothing_is_an_error(tmp_path):
    model = _model(tmp_path)
    with pytest.raises(InitConfigError, match='matches no parameter'):
        build_optimizer(model, dict(
            type='SGD', lr=0.1,
            constructor='ProvenanceOptimizerConstructor',
            paramwise_cfg=dict(freeze=dict(name=r'neck\..*'))))
