"""The optimizer constructor plans each ``Pretrained`` entry once: the
table of origins and the partly new tensors (an ``adapt`` transform that
grows a tensor) come from the same plans, so each checkpoint is opened
once before the optimizer is built."""
import torch
from mmdet.models.backbones import ResNet
from mmengine.model import BaseModule
from torch import nn

import mmext_init.session.load_plans as load_plans
from mmext_init import ProvenanceOptimWrapperConstructor


class Detector(BaseModule):
    """A real mmdet ResNet-18 and a head grown from 3 to 4 classes, each
    with its own ``Pretrained`` file."""

    def __init__(self, backbone: str, head: str):
        super().__init__()
        self.backbone = ResNet(depth=18, init_cfg=dict(
            type='Pretrained', checkpoint=backbone))
        self.head = nn.Linear(512, 4)
        self.head.init_cfg = None
        self.head_wrapper = BaseModule(init_cfg=dict(
            type='Pretrained', checkpoint=head,
            adapt=[dict(type='Grow', keys=r'fc\..*')]))
        self.head_wrapper.fc = self.head


def test_each_entry_is_planned_once(tmp_path, monkeypatch):
    backbone = tmp_path / 'r18.pth'
    torch.save(ResNet(depth=18).state_dict(), backbone)
    head = tmp_path / 'head.pth'
    torch.save({'fc.weight': torch.ones(3, 512),
                'fc.bias': torch.ones(3)}, head)
    opened = []
    plan_load = load_plans.plan_load

    def counting(module, path, entry, label):
        opened.append(entry.checkpoint)
        return plan_load(module, path, entry, label)

    monkeypatch.setattr(load_plans, 'plan_load', counting)
    model = Detector(str(backbone), str(head))
    constructor = ProvenanceOptimWrapperConstructor(dict(
        type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
        paramwise_cfg=dict(freeze='loaded'))
    wrapper = constructor(model)
    assert sorted(opened) == sorted([str(backbone), str(head)])
    trained = {id(p) for g in wrapper.optimizer.param_groups
               for p in g['params'] if p.requires_grad}
    # the grown head trains (partly new), the loaded backbone does not
    assert id(model.head.weight) in trained
    assert id(model.head.bias) in trained
    assert id(model.backbone.conv1.weight) not in trained
