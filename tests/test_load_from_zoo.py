"""mmdet's fine-tuning recipe on a config as shipped: RetinaNet R50
(``retinanet_r50_fpn_1x_coco.py``, its backbone ``Pretrained`` from
``torchvision://resnet50``) with ``load_from`` a COCO-style detector
checkpoint and ``num_classes`` changed. The Runner runs the steps of
``train()`` in its order (optim wrapper, ``init_weights()``,
``load_or_resume()``, the optim wrapper's start); no data is needed.
``load_from`` comes last and wins: the ledger names it for every tensor it
wrote, ``freeze='loaded'`` froze exactly those, predicted before
``init_weights()``."""
import os

import pytest
import torch
import torchvision
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.runner.checkpoint import get_torchvision_models

import mmext_init

CONFIG = os.path.join(os.path.dirname(__import__('mmdet').__file__), '.mim',
                      'configs', 'retinanet', 'retinanet_r50_fpn_1x_coco.py')
NEW = ('bbox_head.retina_cls.weight', 'bbox_head.retina_cls.bias')


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """torchvision's ResNet-50 file in a fresh hub cache (random values)."""
    url = get_torchvision_models()['resnet50']
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(),
               cache / os.path.basename(url))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return url


def runner_of(tmp_path, load_from: str) -> Runner:
    cfg = Config.fromfile(CONFIG)
    cfg.model.bbox_head.num_classes = 3
    cfg.work_dir = str(tmp_path / 'work')
    cfg.load_from = load_from
    cfg.optim_wrapper.constructor = 'ProvenanceOptimWrapperConstructor'
    cfg.optim_wrapper.paramwise_cfg = dict(freeze='loaded')
    return Runner.from_cfg(cfg)


def test_load_from_wins_over_the_backbone_url_and_freezes_what_it_loaded(
        tmp_path, torch_home):
    coco = Config.fromfile(CONFIG)  # the 80-class detector, stock
    init_default_scope('mmdet')
    with mmext_init.stock_mmengine():
        detector = MODELS.build(dict(coco.model, init_cfg=None,
                                     backbone=dict(coco.model.backbone,
                                                   init_cfg=None)))
    base = str(tmp_path / 'coco.pth')
    torch.save({'state_dict': detector.state_dict(), 'meta': {}}, base)
    runner = runner_of(tmp_path, base)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner._init_model_weights()
    first = mmext_init.get_provenance(runner.model)
    assert first.entries['backbone.conv1.weight'].source == \
        'torchvision://resnet50'
    runner.load_or_resume()
    runner.optim_wrapper.initialize_count_status(runner.model, 0, 1)
    ledger = mmext_init.get_provenance(runner.model)
    state, coco_state = runner.model.state_dict(), detector.state_dict()
    for name, entry in ledger.entries.items():
        if name in NEW:
            assert entry.kind == 'initializer', name
            continue
        assert (entry.source, entry.key) == (base, name), name
        assert 'load_from' in entry.notes
        assert torch.equal(state[name], coco_state[name]), name
    assert ledger.loads[-1].mismatched == [
        (NEW[0], (720, 256, 3, 3), (27, 256, 3, 3)), (NEW[1], (720, ), (27, ))]
    trained = sorted(n for n, p in runner.model.named_parameters()
                     if p.requires_grad)
    assert trained == sorted(NEW)
