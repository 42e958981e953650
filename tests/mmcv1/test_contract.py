"""The contract on mmcv 1.x: real mmcls modules on mmcv's ``BaseModule``,
real checkpoints written to ``tmp_path``."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmcls.models import ResNet
from mmcv.cnn import initialize
from mmcv.runner import BaseModule

import mmext_init
from mmext_init import get_provenance
from mmcls_models import LORA_LAST_CONV, classifier


class Adapter(BaseModule):
    """An mmcv 1.x module declaring its init: Constant(0) on its conv."""

    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type='Constant', val=0,
                                       layer='Conv2d'))
        self.conv = nn.Conv2d(64, 64, 1)


def _resnet_checkpoint(tmp_path, numpy_meta: bool = True):
    src = ResNet(depth=18)
    path = str(tmp_path / 'r18.pth')
    meta = {'hook_msgs': {'best_score': np.float64(0.5)}, 'epoch': 3} \
        if numpy_meta else {}
    torch.save({'state_dict': src.state_dict(), 'meta': meta}, path)
    return src, path


def _scenario(path: str) -> ResNet:
    net = ResNet(depth=18, init_cfg=dict(type='Pretrained', checkpoint=path))
    net.adapters = nn.ModuleList([Adapter()])
    return net


def test_adapter_gets_declared_init_and_backbone_loads_bit_exact(tmp_path):
    src, path = _resnet_checkpoint(tmp_path)
    net = _scenario(path)
    net.init_weights()
    reference = src.state_dict()
    for name, value in net.state_dict().items():
        if name.startswith('adapters.'):
            continue
        assert torch.equal(value, reference[name]), name
    assert net.adapters[0].conv.weight.count_nonzero() == 0
    assert net.adapters[0].conv.bias.count_nonzero() == 0
    entries = get_provenance(net).entries
    assert entries['conv1.weight'].kind == 'checkpoint'
    assert entries['conv1.weight'].source == path
    assert entries['adapters.0.conv.weight'].describe('ResNet') == \
        'Constant(val=0) from adapters.0'


def test_stock_mmcv1_skips_the_adapter(tmp_path):
    """What the backend fixes: stock returns after Pretrained (checkpoint
    without numpy meta, which stock could not read under torch >= 2.6)."""
    _, path = _resnet_checkpoint(tmp_path, numpy_meta=False)
    torch.manual_seed(0)
    with mmext_init.stock_mmengine():
        net = _scenario(path)
        net.init_weights()
    assert net.adapters[0].conv.weight.count_nonzero() > 0


def test_stock_init_types_give_stock_values():
    """Declared inits (no Pretrained) are bit-identical to stock mmcv 1.x's
    for the same seed: mmcls ResNet's Kaiming/Constant defaults."""
    torch.manual_seed(3)
    ours = ResNet(depth=18)
    ours.init_weights()
    with mmext_init.stock_mmengine():
        torch.manual_seed(3)
        stock = ResNet(depth=18)
        stock.init_weights()
    for (name, a), b in zip(ours.state_dict().items(),
                            stock.state_dict().values()):
        assert torch.equal(a, b), name
    entries = get_provenance(ours).entries
    assert entries['layer2.0.conv1.weight'].describe('ResNet').startswith(
        'Kaiming')
    assert entries['bn1.running_mean'].kind == 'constructor'



def test_new_init_types_in_mmcv_initializers():
    fc = nn.Linear(3, 3)
    initialize(fc, dict(type='Identity', layer='Linear'))
    assert torch.equal(fc.weight.detach(), torch.eye(3))
    with mmext_init.stock_mmengine():
        with pytest.raises(KeyError, match='Identity'):
            initialize(fc, dict(type='Identity', layer='Linear'))


def test_insert_on_an_mmcls_model_config(tmp_path):
    src, path = _resnet_checkpoint(tmp_path)
    model = classifier(path, LORA_LAST_CONV)
    model.init_weights()
    conv = model.backbone.layer4[1].conv2
    assert torch.equal(conv.weight, src.layer4[1].conv2.weight)
    entries = get_provenance(model).entries
    lora = [n for n in entries if 'lora_' in n]
    assert lora and all(entries[n].kind == 'initializer' for n in lora)
    model.eval()
    out = model(torch.randn(1, 3, 32, 32), return_loss=False)
    assert len(out) == 1 and len(out[0]) == 3


def test_override_of_init_weights_starts_a_session(tmp_path):
    """mmcls's ResNet overrides init_weights (zero_init_residual): the
    override runs inside a tracked session, the report attributes it."""
    _, path = _resnet_checkpoint(tmp_path)
    net = ResNet(depth=18, zero_init_residual=True)
    net.init_weights()
    entries = get_provenance(net).entries
    # mmcls's ResNet default init_cfg: Kaiming on convs, Constant on norms
    assert entries['conv1.weight'].kind == 'initializer'
    assert entries['layer1.0.bn2.weight'].kind in ('init_weights',
                                                   'initializer')
    assert net.layer1[0].bn2.weight.count_nonzero() == 0
