"""``uninstall()`` undoes every row of ``PATCHES``, the rows that are no one
attribute replaced too (``Effect``): no global torch hook of mmext_init, no
pending parameter's class, no ``__init_subclass__`` on ``BaseModule``, the
stock ``OptimWrapper.initialize_count_status``; ``install()`` again
restores all of it."""
import gc

import torch
import torch.nn as nn
from mmdet.models.backbones import ResNet
from mmengine.model import BaseModule, Sequential
from mmengine.optim import OptimWrapper
from torch.nn.modules import module as torch_module
from torch.optim import optimizer as torch_optimizer

import mmext_init
from mmext_init.deferred import deferred_construction, hooks_installed
from mmext_init.deferred.replay import PendingAlias, PendingParameter
from mmext_init.plugin.patches import PATCHES, Effect, Patch, original
from mmext_init.training.startup import STARTS


def _ours(hooks) -> list:
    return [h for h in hooks.values()
            if getattr(h, '__module__', '').startswith('mmext_init')]


def _pending_objects() -> list:
    return [o for o in gc.get_objects()
            if type(o) in (PendingParameter, PendingAlias)]


def _own_init_weights_class() -> type:

    class Own(BaseModule):

        def init_weights(self):
            pass

    return Own


def _state() -> dict:
    return dict(
        forward=_ours(torch_module._global_forward_pre_hooks),
        step=_ours(torch_optimizer._global_optimizer_pre_hooks),
        pending=len(_pending_objects()),
        subclass_hook='__init_subclass__' in BaseModule.__dict__,
        wrapped=hasattr(_own_init_weights_class().__dict__['init_weights'],
                        '_mmext_wrapped_override'),
        count_status=OptimWrapper.__dict__['initialize_count_status'])


def test_uninstall_undoes_every_row_and_install_restores_them():
    stock_count_status = original(OptimWrapper, 'initialize_count_status')
    assert stock_count_status.__module__.startswith('mmengine.')
    assert {type(p) for p in PATCHES} == {Patch, Effect}
    with deferred_construction():
        backbone = ResNet(depth=18)
    installed = _state()
    assert installed['forward'] and installed['step'] and installed['pending']
    assert installed['subclass_hook'] and installed['wrapped']
    assert installed['count_status'] is not stock_count_status
    mmext_init.uninstall()
    try:
        assert _state() == dict(forward=[], step=[], pending=0,
                                subclass_hook=False, wrapped=False,
                                count_status=stock_count_status)
        assert all(type(p) is nn.Parameter for p in backbone.parameters())
        assert BaseModule.init_weights is original(BaseModule, 'init_weights')
    finally:
        mmext_init.install()
    with deferred_construction():
        again = ResNet(depth=18)
    reinstalled = _state()
    assert reinstalled['forward'] and reinstalled['step']
    assert reinstalled['subclass_hook'] and reinstalled['wrapped']
    assert reinstalled['count_status'] is not stock_count_status
    assert reinstalled['count_status'].__qualname__ == \
        installed['count_status'].__qualname__
    assert type(again.conv1.weight) is PendingParameter
    mmext_init.materialize(again)
    assert not hooks_installed()


def test_the_optim_wrapper_check_runs_only_installed():
    """The constructor's start check is registered per wrapper and run by
    the ``OptimWrapper.initialize_count_status`` row: stock inside
    ``stock_mmengine()``, run once installed again (a built wrapper keeps
    it)."""
    net = Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    build = mmext_init.ProvenanceOptimWrapperConstructor(
        dict(optimizer=dict(type='SGD', lr=0.1)),
        dict(rules=[dict(select=dict(name=r'1\..*'), lr_mult=2.0)]))
    wrapper = build(net)
    net.init_weights()
    assert 'initialize_count_status' not in wrapper.__dict__
    start = STARTS[wrapper]
    with mmext_init.stock_mmengine():
        wrapper.initialize_count_status(net, 0, 1)
        assert not start.done
    wrapper.initialize_count_status(net, 0, 1)
    assert start.done
    del wrapper
    gc.collect()
    assert start not in STARTS.values()
