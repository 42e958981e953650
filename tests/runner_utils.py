"""A real, tiny MMEngine Runner run (toy model, generated data)."""
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import DataLoader
from toy_models import Trunk


class ToyModel(BaseModel):
    """A model with a 'pretrained' trunk and a head, trainable by a Runner."""

    def __init__(self, trunk: nn.Module = None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.backbone = trunk if trunk is not None else Trunk()
        self.head = nn.Linear(8, 2)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        b = self.backbone
        out = self.head(b.fc2(b.norm(b.fc1(inputs))))
        if mode == 'loss':
            return {'loss': out.pow(2).mean()}
        return out


def run_runner(work_dir: str, model: nn.Module, iters: int = 2,
               log_level: str = 'INFO', **runner_kwargs) -> Runner:
    """Train ``model`` for a few iterations on random vectors, saving a
    checkpoint at the end (``<work_dir>/iter_<iters>.pth``)."""
    data = [{'inputs': torch.randn(8)} for _ in range(8)]
    runner = Runner(
        model=model,
        work_dir=work_dir,
        train_dataloader=DataLoader(data, batch_size=2),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=iters,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        log_level=log_level,
        default_scope='mmengine',
        experiment_name=f'toy_{abs(hash(work_dir))}',
        **runner_kwargs)
    runner.train()
    return runner
