"""LSUVInitHook in a real Runner: rescales only what was not loaded."""
import pytest
import torch
from mmengine.hooks import Hook
from runner_utils import ToyModel, run_runner
from toy_models import Trunk

from mmext_init import (InitConfigError, LSUVInitHook, get_provenance,
                        read_checkpoint)


class Snapshot(Hook):
    """Records the head's output variance and the weights after LSUV."""
    priority = 'LOWEST'

    def before_train(self, runner):
        model = runner.model
        self.weights = {k: v.detach().clone()
                        for k, v in model.state_dict().items()}
        batch = next(iter(runner.train_dataloader))
        data = model.data_preprocessor(batch, True)
        with torch.no_grad():
            self.var = model(**data, mode='tensor').float().var(
                unbiased=False).item()


def test_lsuv_rescales_not_loaded_layers_only(tmp_path, runner_ckpt):
    trunk = Trunk(init_cfg=dict(type='Pretrained', checkpoint=runner_ckpt,
                                prefix='backbone.'))
    model = ToyModel(trunk, init_cfg=dict(type='Normal', std=30,
                                          layer='Linear'))
    snap = Snapshot()
    runner = run_runner(str(tmp_path), model, iters=1, custom_hooks=[
        dict(type='LSUVInitHook', tol=0.05), snap])
    ckpt = read_checkpoint(runner_ckpt)[0]['state_dict']
    for key in ('backbone.fc1.weight', 'backbone.fc2.weight'):
        assert torch.equal(snap.weights[key], ckpt[key]), key
    assert abs(snap.var - 1) < 0.05
    entry = get_provenance(runner.model).entries['head.weight']
    assert entry.source == 'Normal'
    assert entry.notes and entry.notes[0].startswith('LSUVInitHook scaled x')


class WideLinear(torch.nn.Linear):
    """A subclass: ``layers=['Linear']`` reaches it (bases included)."""


def test_lsuv_layers_include_bases_and_include_matches_whole_paths():
    model = ToyModel(init_cfg=dict(type='Normal', std=1, layer='Linear'))
    model.head = WideLinear(8, 2)
    model.init_weights()
    assert LSUVInitHook().select(model) == ['backbone.fc1', 'backbone.fc2',
                                            'head']
    assert LSUVInitHook(layers=['LayerNorm']).select(model) \
        == ['backbone.norm']
    hook = LSUVInitHook(include=r'backbone\..*')
    assert hook.select(model) == ['backbone.fc1', 'backbone.fc2']
    with pytest.raises(InitConfigError, match=(
            r"^LSUVInitHook: include='backbone' matches no Conv2d or Linear "
            r'layer of ToyModel \(it matches only part of 2 names, e\.g\. '
            r"'backbone\.fc1': a pattern matches whole names, e\.g\. "
            r"'backbone\.\*'\)$")):
        LSUVInitHook(include='backbone').select(model)
    with pytest.raises(InitConfigError, match='is no regex'):
        LSUVInitHook(include='(')
