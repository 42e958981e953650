"""Test-only hook: snapshot the model weights right before the first
training iteration (after ``init_weights``), one file per rank.

Importing it also works around an MMEngine 0.10.7 limitation that is not
ours: ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` even with the
gloo backend, which fails on a CPU-only torch build; the CPU-only CI needs it
to be a no-op to run ``torchrun ... --launcher pytorch``.
"""
import os

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

if not torch.cuda.is_available():
    torch.cuda.set_device = lambda device: None


@HOOKS.register_module(force=True)
class WeightSnapshotHook(Hook):
    """Saves ``{name: tensor}`` to ``<work_dir>/snapshot_rank<R>.pth``."""
    priority = 'VERY_LOW'

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(runner.work_dir,
                                       f'snapshot_rank{get_rank()}.pth'))
