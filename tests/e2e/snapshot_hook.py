"""Test-only hook (imported through the derived config's ``custom_imports``).

* ``WeightSnapshotHook`` saves the model's ``state_dict`` (parameters and
  buffers) right before the first training iteration (``before_train``,
  after ``init_weights`` and after any other ``before_train`` hook such as
  LSUV) to ``<work_dir>/snapshot_rank<R>.pth``, and again once training is
  over (``after_train``: trained weights, BatchNorm running statistics) to
  ``<work_dir>/final_rank<R>.pth``. At the end of the run it lists every
  file named ``init_provenance.json`` this process opened for writing in
  ``<work_dir>/provenance_writes_rank<R>.json``. All ranks share one log dir,
  so counting files on disk could not tell whether rank 1 wrote too; the
  Python audit hook (:func:`sys.addaudithook`, ``open`` events) can.

Importing it also works around an MMEngine 0.10.7 limitation that is not
mmext_init's: ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` even
with the gloo backend, which fails on a CPU-only torch build; the CPU-only CI
needs it to be a no-op to run ``torchrun ... --launcher pytorch``.

And a second one: MMEngine never destroys the process group, and with torch
2.13 a gloo rank then sometimes aborts at interpreter exit ("terminate called
without an active exception", SIGABRT) after a complete run. A plain torchrun
script with DDP and no MMEngine does it too (2 of 30 runs here; 4 of 40 with
only ``destroy_process_group`` at exit; 0 of 40 with a barrier first). So
after a successful run every rank meets the others at a barrier and destroys
the group at exit.
"""
import atexit
import json
import os
import sys
from typing import List

import torch
import torch.distributed as dist
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

if not torch.cuda.is_available():
    torch.cuda.set_device = lambda device: None

PROVENANCE_WRITES: List[str] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT


def _audit(event: str, args: tuple) -> None:
    if event != 'open' or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = os.fsdecode(args[0]), args[1], args[2]
    writes = (any(c in mode for c in 'wax+') if isinstance(mode, str) else
              bool((flags or 0) & _WRITE_FLAGS))
    if writes and os.path.basename(path) == 'init_provenance.json':
        PROVENANCE_WRITES.append(os.path.abspath(path))


sys.addaudithook(_audit)


@HOOKS.register_module(force=True)
class WeightSnapshotHook(Hook):
    """Saves ``{name: tensor}`` (the model's ``state_dict``: parameters and
    buffers) at ``before_train`` and ``after_train``, and the provenance
    writes of this process at ``after_run`` (see the module docstring).

    Example (derived config)::

        custom_hooks = [dict(type='WeightSnapshotHook')]
    """
    priority = 'VERY_LOW'

    def before_train(self, runner) -> None:
        _save_state(runner, 'snapshot')

    def after_train(self, runner) -> None:
        _save_state(runner, 'final')

    def after_run(self, runner) -> None:
        path = os.path.join(runner.work_dir,
                            f'provenance_writes_rank{get_rank()}.json')
        with open(path, 'w') as f:
            json.dump(PROVENANCE_WRITES, f)
        atexit.register(_leave_process_group)  # the run completed


def _save_state(runner, stem: str) -> None:
    """The unwrapped model's ``state_dict`` to
    ``<work_dir>/<stem>_rank<R>.pth``."""
    model = runner.model.module if is_model_wrapper(
        runner.model) else runner.model
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(runner.work_dir,
                                   f'{stem}_rank{get_rank()}.pth'))


def _leave_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
