"""Save only what trained: ``DeltaCheckpointHook`` writes the
tensors that train and the base fingerprint; ``Pretrained(checkpoint=[base,
delta, ...])`` stacks them back, bit-exactly, and refuses a delta on another
base or alone (real Runner, real files)."""
import os

import pytest
import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmseg.models.backbones import VisionTransformer
from runner_utils import ToyModel
from torch.utils.data import DataLoader

from mmext_init import (CheckpointError, DeltaCheckpointHook, InitConfigError,
                        get_provenance)
from mmext_init.checkpoint.fingerprint import tensors_hash
from mmext_init.checkpoint.stacked import open_stack
from mmext_init.hooks.delta_checkpoint import delta_checkpoint, delta_names
from mmext_init.loading.options import PretrainedOptions
from retinanet_runs import model_cfg, retinanet_runner, write_backbone_ckpt

ITERS = 4


class Run:
    """A finished 4-iteration run (``freeze='loaded'``) with its files."""

    def __init__(self, folder: str) -> None:
        self.r18 = write_backbone_ckpt(os.path.join(folder, 'r18.pth'))
        self.base = os.path.join(folder, 'base.pth')
        init_default_scope('mmdet')
        model = MODELS.build(model_cfg(self.r18))  # the base: the model as
        model.init_weights()  # loaded, before training (new tensors: any)
        torch.save({'state_dict': model.state_dict()}, self.base)
        self.work_dir = os.path.join(folder, 'run')
        runner = retinanet_runner(
            self.work_dir, self.r18, dict(freeze='loaded'), iters=ITERS,
            lr=0.001,  # 0.01 can diverge to NaN within 4 iterations here
            custom_hooks=[dict(type='DeltaCheckpointHook', interval=2,
                               by_epoch=False)],
            default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                               checkpoint=dict(type='CheckpointHook',
                                               interval=ITERS,
                                               by_epoch=False)))
        runner.train()
        self.model = runner.model
        self.trained = {k: v.clone() for k, v in
                        runner.model.state_dict().items()}
        assert all(torch.isfinite(v).all() for v in self.trained.values()
                   if v.is_floating_point())
        self.delta = os.path.join(self.work_dir, f'delta_iter_{ITERS}.pth')
        self.full = os.path.join(self.work_dir, f'iter_{ITERS}.pth')

    def fresh(self, checkpoint) -> nn.Module:
        """The same detector, built anew, its root loading ``checkpoint``."""
        cfg = model_cfg(self.r18)
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint)
        init_default_scope('mmdet')
        return MODELS.build(cfg)


@pytest.fixture(scope='module')
def run(tmp_path_factory) -> Run:
    return Run(str(tmp_path_factory.mktemp('issue16')))


def test_delta_holds_exactly_what_trained(run):
    names = sorted(f for f in os.listdir(run.work_dir) if f.endswith('.pth'))
    assert names == ['delta_iter_2.pth', 'delta_iter_4.pth', 'iter_4.pth']
    delta = torch.load(run.delta)
    trainable = {n for n, p in run.model.named_parameters()
                 if p.requires_grad}
    assert trainable and not any(n.startswith('backbone.layer')
                                 for n in trainable)
    assert set(delta['state_dict']) == trainable  # no norm trains here
    for name, value in delta['state_dict'].items():
        assert torch.equal(value, run.trained[name]), name
    meta = delta['meta']
    assert (meta['mmext_delta'], meta['iter'], meta['epoch'],
            meta['insert']) == (1, ITERS, 0, None)
    assert meta['base']['files'] == [run.r18]
    left_out = {k: v for k, v in run.trained.items() if k not in trainable}
    assert meta['base']['tensors'] == len(left_out)
    assert meta['base']['hash'] == tensors_hash(left_out, left_out.get)
    assert torch.load(os.path.join(
        run.work_dir, 'delta_iter_2.pth'))['meta']['iter'] == 2
    size, full = os.path.getsize(run.delta), os.path.getsize(run.full)
    print(f'\ntiny RetinaNet: delta {size} B, Runner checkpoint {full} B '
          f'({size / full:.2%})')
    assert size < full / 5


def test_buffers_of_training_modules_go_with_them():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4),
                        nn.Sequential(nn.BatchNorm2d(4), nn.Linear(4, 4)))
    net[0].requires_grad_(False)
    net[2][0].requires_grad_(False)  # frozen norm: its buffers stay base
    assert delta_names(net) == [
        '1.weight', '1.bias', '1.running_mean', '1.running_var',
        '1.num_batches_tracked', '2.1.weight', '2.1.bias']


def test_base_plus_delta_reproduces_the_trained_model(run):
    model = run.fresh([run.base, run.delta])
    model.init_weights()
    state = model.state_dict()
    assert state.keys() == run.trained.keys()
    for name, value in run.trained.items():
        assert state[name].dtype == value.dtype
        assert torch.equal(state[name], value), name
    ledger = get_provenance(model)
    load = next(r for r in ledger.loads if r.module == '')
    assert load.checkpoint == f'{run.base} + {run.delta}'
    assert load.loaded_fraction == 1.0


def test_ledger_names_the_delta_for_what_it_provides(run):
    model = run.fresh([run.base, run.delta])
    model.init_weights()
    ledger = get_provenance(model)
    trained = set(torch.load(run.delta)['state_dict'])
    for name, entry in ledger.entries.items():
        assert entry.kind == 'checkpoint', name
        assert entry.source == (run.delta if name in trained else
                                run.base), name


def test_deltas_stack_on_their_base(run):
    """delta_iter_4 was trained on the same base as delta_iter_2 (same
    frozen tensors): stacked above it, it is checked and wins."""
    delta_2 = os.path.join(run.work_dir, 'delta_iter_2.pth')
    model = run.fresh([run.base, delta_2, run.delta])
    model.init_weights()
    for name, value in model.state_dict().items():
        assert torch.equal(value, run.trained[name]), name
    stack = open_stack([run.base, delta_2, run.delta])
    assert stack.file_of('bbox_head.retina_cls.bias') == run.delta
    assert stack.file_of('backbone.conv1.weight') == run.base


def test_delta_on_another_base_names_both_files(run, tmp_path):
    state = torch.load(run.base)['state_dict']
    state['backbone.conv1.weight'][0, 0, 0, 0] += 1  # one frozen tensor
    other = str(tmp_path / 'other_base.pth')
    torch.save({'state_dict': state}, other)
    with pytest.raises(CheckpointError) as error:
        run.fresh([other, run.delta]).init_weights()
    message = str(error.value)
    assert (f'delta checkpoint {run.delta} was trained from another base '
            f'than {other}') in message
    assert 'base files recorded in the delta: r18.pth' in message


def test_base_of_another_layout_is_refused(run):
    """The backbone checkpoint it was loaded from is no base: its names
    are the backbone's, not the model's."""
    with pytest.raises(CheckpointError, match='trained from another base'):
        open_stack([run.r18, run.delta])


def test_delta_alone_needs_its_base(run, tmp_path):
    expected = (f'{run.delta} is a delta checkpoint (only the tensors that '
                'trained, written by DeltaCheckpointHook) and needs its base '
                '(recorded: r18.pth)')
    with pytest.raises(CheckpointError) as error:
        run.fresh(run.delta).init_weights()
    assert expected in str(error.value)
    assert f"checkpoint=['<base>.pth', '{run.delta}']" in str(error.value)
    with pytest.raises(CheckpointError, match='needs its base'):
        run.fresh([run.delta, run.base]).init_weights()
    for resume in (False, True):
        runner = retinanet_runner(str(tmp_path / f'load_{resume}'), run.r18,
                                  dict(freeze='loaded'), load_from=run.delta,
                                  resume=resume)
        with pytest.raises(CheckpointError) as error:
            runner.load_or_resume()
        assert expected in str(error.value)


def test_checkpoint_list_options():
    entry = PretrainedOptions(('base.pth', 'delta.pth'))
    assert entry.checkpoints == ('base.pth', 'delta.pth')
    assert entry.checkpoint == 'base.pth + delta.pth'
    assert 'a list of checkpoints (a base, then deltas)' in \
        entry.ignored_by_own_loader()
    with pytest.raises(InitConfigError, match='non-empty list of paths'):
        PretrainedOptions([])
    with pytest.raises(InitConfigError,
                       match="^Pretrained: checkpoint must be a path, got 3$"):
        PretrainedOptions(3)


def test_self_loading_backbone_cannot_stack(tmp_path):
    args = dict(img_size=32, patch_size=8, embed_dims=32, num_layers=1,
                num_heads=2)
    path = str(tmp_path / 'vit.pth')
    torch.save({'state_dict': VisionTransformer(**args).state_dict()}, path)
    vit = VisionTransformer(**args, init_cfg=dict(type='Pretrained',
                                                  checkpoint=[path, path]))
    with pytest.raises(InitConfigError,
                       match='ignores a list of checkpoints'):
        vit.init_weights()


def test_by_epoch_names_and_counts(tmp_path):
    data = [{'inputs': torch.randn(8)} for _ in range(4)]
    model = ToyModel()
    model.backbone.requires_grad_(False)
    runner = Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=DataLoader(data, batch_size=2),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=True, max_epochs=3),
        default_hooks=dict(checkpoint=None),
        custom_hooks=[DeltaCheckpointHook(interval=2)],
        default_scope='mmengine', experiment_name='issue16_epochs')
    runner.train()
    found = sorted(f for f in os.listdir(tmp_path) if f.startswith('delta'))
    assert found == ['delta_epoch_2.pth', 'delta_epoch_3.pth']  # + last
    meta = torch.load(tmp_path / 'delta_epoch_3.pth')['meta']
    assert (meta['epoch'], meta['iter']) == (3, 6)
    assert sorted(torch.load(tmp_path / 'delta_epoch_3.pth')['state_dict']
                  ) == ['head.bias', 'head.weight']


def test_vit_b_lora_delta_is_under_2_percent(tmp_path):
    """ViT-B/16 (mmseg, 224 px, ~86M parameters), rank-8 LoRA on each
    attention's qkv projection (768 -> 8 -> 2304), everything else frozen:
    the analytic ratio and one real measurement."""
    vit = VisionTransformer(img_size=224, embed_dims=768, num_layers=12,
                            num_heads=12)
    vit.requires_grad_(False)
    for layer in vit.layers:
        layer.attn.lora_down = nn.Linear(768, 8, bias=False)
        layer.attn.lora_up = nn.Linear(8, 3 * 768, bias=False)
    total = sum(t.numel() for t in vit.state_dict().values())
    lora = 12 * 8 * (768 + 3 * 768)
    assert sum(p.numel() for p in vit.parameters() if p.requires_grad) == lora
    delta = delta_checkpoint(vit)
    assert len(delta['state_dict']) == 24
    torch.save(delta, tmp_path / 'delta.pth')
    torch.save({'state_dict': vit.state_dict()}, tmp_path / 'full.pth')
    size = os.path.getsize(tmp_path / 'delta.pth')
    full = os.path.getsize(tmp_path / 'full.pth')
    print(f'\nViT-B + LoRA r8: analytic {lora}/{total} = {lora / total:.3%};'
          f' measured {size} B / {full} B = {size / full:.3%}')
    assert lora / total < 0.005
    assert size / full < 0.02
