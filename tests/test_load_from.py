"""``load_from`` and ``resume`` (the Runner's own load after
``init_weights()``) through real MMEngine Runners on a small BaseModel: the
base checkpoint is written by a stock Runner run (plugin off), the new model
has one more class. The ledger, the report, ``init_provenance.json``,
``freeze='loaded'``, ``load_from_cfg`` adaptation, resume and the dry run."""
import itertools
import json
import os
import shutil

import pytest
import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.registry import MODELS
from mmengine.runner import Runner
from torch.utils.data import DataLoader

import mmext_init
from mmext_init.errors import InitConfigError
from mmext_init.provenance.report import PROVENANCE_FILE
from mmext_init.provenance.stored import META_KEY
from mmext_init.training.report import TRAINABLE_FILE
from runner_utils import ToyModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from mmext_init.tools import match_checkpoint

RUNS = itertools.count()
FREEZE = dict(constructor='ProvenanceOptimWrapperConstructor',
              paramwise_cfg=dict(freeze='loaded'))


@MODELS.register_module(force=True)
class LoadFromNet(ToyModel):
    """A trunk (no init_cfg at all) and a classifier of ``num_classes``."""

    def __init__(self, num_classes: int = 3, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.head = nn.Linear(8, num_classes)


class Snapshot(Hook):
    """The model's tensors when training starts (after the load)."""

    def before_train(self, runner) -> None:
        self.state = {k: v.detach().clone()
                      for k, v in runner.model.state_dict().items()}


def runner(work_dir, num_classes=4, iters=2, optim=None, **kwargs) -> Runner:
    gen = torch.Generator().manual_seed(1)
    data = [{'inputs': torch.randn(8, generator=gen)} for _ in range(8)]
    optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9),
                         **(optim or {}))
    return Runner(
        model=dict(type='LoadFromNet', num_classes=num_classes),
        work_dir=str(work_dir),
        train_dataloader=DataLoader(data, batch_size=2),
        optim_wrapper=optim_wrapper,
        train_cfg=dict(by_epoch=False, max_iters=iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=2, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[Snapshot()],
        randomness=dict(seed=0),
        default_scope='mmengine',
        experiment_name=f'load_from_{next(RUNS)}',
        **kwargs)


def snapshot(run: Runner) -> dict:
    return next(h for h in run.hooks if isinstance(h, Snapshot)).state


@pytest.fixture(scope='module')
def base(tmp_path_factory) -> str:
    """A stock Runner's checkpoint of the 3-class model (plugin off)."""
    work = tmp_path_factory.mktemp('base')
    with mmext_init.stock_mmengine():
        runner(work, num_classes=3).train()
    return str(work / 'iter_2.pth')


def base_state(path: str) -> dict:
    return mmext_init.read_checkpoint(path)[0]['state_dict']


def log_text(run: Runner) -> str:
    logs = [f for f in os.listdir(run.log_dir) if f.endswith('.log')]
    with open(os.path.join(run.log_dir, logs[0])) as f:
        return f.read()


def test_ledger_names_the_file_and_key_of_every_loaded_tensor(tmp_path,
                                                              base):
    run = runner(tmp_path, load_from=base)
    run.train()
    ledger = mmext_init.get_provenance(run.model)
    start, ckpt = snapshot(run), base_state(base)
    for name, prov in ledger.entries.items():
        if name.startswith('head.'):  # 3 -> 4 classes: skipped by stock
            assert prov.kind == 'constructor', (name, prov)
            assert not torch.equal(start[name][:3], ckpt[name])
            continue
        assert (prov.kind, prov.source, prov.key) == ('checkpoint', base,
                                                      name), name
        assert 'load_from' in prov.notes
        assert torch.equal(start[name], ckpt[name]), name
    record = ledger.loads[-1]
    assert (record.via, record.checkpoint) == ('load_from', base)
    assert record.mismatched == [('head.weight', (3, 8), (4, 8)),
                                 ('head.bias', (3, ), (4, ))]
    with open(os.path.join(run.log_dir, PROVENANCE_FILE)) as f:
        written = json.load(f)  # rewritten after the load
    assert written['entries']['backbone.fc1.weight']['source'] == base
    assert written['loads'][-1]['via'] == 'load_from'
    log = log_text(run)
    assert 'via load_from: 6 loaded' in log
    first, final = log.split('the report after that load is the final one')
    assert f"the Runner loads load_from='{base}' next" in first
    assert 'via load_from' not in first and 'via load_from' in final
    assert ('shape mismatch head.weight: checkpoint (3, 8) vs model (4, 8)'
            in log)


def test_a_url_load_from_is_read_from_the_hub_cache(tmp_path, base,
                                                   monkeypatch):
    url = 'https://download.openmmlab.com/tests/load_from_net.pth'
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    shutil.copy(base, cache / 'load_from_net.pth')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    run = runner(tmp_path / 'run', load_from=url, optim=FREEZE)
    run.train()
    ledger = mmext_init.get_provenance(run.model)
    ckpt = base_state(base)
    for name, prov in ledger.entries.items():
        if not name.startswith('head.'):
            assert (prov.source, prov.key) == (url, name), name
            assert torch.equal(snapshot(run)[name], ckpt[name]), name
    assert ledger.loads[-1].checkpoint == url
    assert not any(p.requires_grad for n, p in run.model.named_parameters()
                   if not n.startswith('head.'))


def test_values_are_stock_bit_for_bit(tmp_path, base, monkeypatch):
    plugin = runner(tmp_path / 'plugin', load_from=base)
    plugin.train()
    # stock torch >= 2.6 reads a Runner checkpoint only so
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    with mmext_init.stock_mmengine():
        stock = runner(tmp_path / 'stock', load_from=base)
        stock.train()
    for stage in (snapshot, lambda r: r.model.state_dict()):
        mine, theirs = stage(plugin), stage(stock)
        assert list(mine) == list(theirs)
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), name


def test_freeze_loaded_freezes_exactly_what_load_from_loaded(tmp_path,
                                                             base):
    run = runner(tmp_path, load_from=base, optim=FREEZE)
    run.train()
    ckpt, final = base_state(base), run.model.state_dict()
    for name, p in run.model.named_parameters():
        assert p.requires_grad == name.startswith('head.'), name
        if name.startswith('head.'):
            assert not torch.equal(final[name], snapshot(run)[name])
        else:
            assert torch.equal(final[name], ckpt[name]), name
    with open(os.path.join(run.log_dir, TRAINABLE_FILE)) as f:
        report = json.load(f)
    assert report['sources'] == [dict(file=base, via='load_from',
                                      trainable=0, frozen=6)]
    assert 'loaded from ' + base + ' (load_from): 6 tensors, 6 frozen' in \
        log_text(run)


def test_load_from_cfg_adapts_the_head_rows(tmp_path, base):
    adapt = [dict(type='Classes', keys=r'head\.(weight|bias)',
                  index_map=[2, 0, -1, 1])]
    run = runner(tmp_path, load_from=base, optim=FREEZE,
                 cfg=dict(load_from_cfg=dict(adapt=adapt)))
    run.train()
    start, ckpt = snapshot(run), base_state(base)
    for name in ('head.weight', 'head.bias'):
        assert torch.equal(start[name][[0, 1, 3]], ckpt[name][[2, 0, 1]])
        assert not torch.equal(start[name][2], ckpt[name][2])
        prov = mmext_init.get_provenance(run.model).entries[name]
        assert (prov.kind, prov.source) == ('checkpoint', base)
        assert any(n.startswith('Classes(') for n in prov.notes)
        assert 'rest: constructor default (no declared init)' in prov.notes
        assert run.model.get_parameter(name).requires_grad  # partly new
    assert ('adapted head.weight: Classes(' in log_text(run))


def test_load_from_cfg_unknown_key_is_an_error(tmp_path, base):
    run = runner(tmp_path, load_from=base,
                 cfg=dict(load_from_cfg=dict(prefix='backbone.')))
    with pytest.raises(InitConfigError, match="load_from_cfg: unknown key"):
        run.train()


def test_resume_keeps_the_ledger_of_the_run_it_continues(tmp_path, base):
    first = runner(tmp_path, load_from=base, optim=FREEZE)
    first.train()
    saved = mmext_init.read_checkpoint(str(tmp_path / 'iter_2.pth'))[0]
    assert saved['meta'][META_KEY]['entries']['backbone.fc1.weight'][
        'source'] == base
    ledger = mmext_init.get_provenance(first.model)
    second = runner(tmp_path, iters=4, optim=FREEZE, resume=True)
    second.train()
    assert second.iter == 4  # resumed at 2
    resumed = mmext_init.get_provenance(second.model)
    assert resumed.entries == ledger.entries
    assert resumed.loads[-1].via == 'resume'
    assert resumed.loads[-1].checkpoint == str(tmp_path / 'iter_2.pth')
    for name, p in second.model.named_parameters():
        assert p.requires_grad == name.startswith('head.'), name


def test_resume_without_a_stored_ledger_names_the_resumed_file(tmp_path,
                                                               base):
    with mmext_init.stock_mmengine():
        runner(tmp_path, num_classes=3).train()
    run = runner(tmp_path, num_classes=3, iters=4, resume=True)
    run.train()
    resumed = str(tmp_path / 'iter_2.pth')
    ledger = mmext_init.get_provenance(run.model)
    assert {p.source for p in ledger.entries.values()} == {resumed}
    assert all('resume' in p.notes for p in ledger.entries.values())


def test_dry_run_predicts_what_load_from_loads(tmp_path, base):
    config = tmp_path / 'cfg.py'
    config.write_text(
        f"model = dict(type='LoadFromNet', num_classes=4)\n"
        f"load_from = {base!r}\n"
        "optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1), "
        "constructor='ProvenanceOptimWrapperConstructor', "
        "paramwise_cfg=dict(freeze='loaded'))\n")
    res = match_checkpoint.dry_run(str(config), optim=True)
    run = runner(tmp_path / 'run', load_from=base)
    run.train()
    ledger = mmext_init.get_provenance(run.model)
    assert res['via'] == 'load_from' and res['checkpoint'] == base
    assert res['loaded'] == ledger.loads[-1].loaded
    assert [(m['key'], tuple(m['checkpoint']), tuple(m['model']))
            for m in res['mismatched']] == ledger.loads[-1].mismatched
    assert res['trainable']['sources'] == [
        dict(file=base, via='load_from', trainable=0, frozen=6)]
    text = match_checkpoint.format_text(res)
    assert 'head.weight: checkpoint (3, 8) vs model (4, 8)' in text
