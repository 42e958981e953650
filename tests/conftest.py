"""Shared fixtures: the plugin imported, seeded RNG, checkpoint writers,
uninitialized memory made visible, no deferred init left behind, the
default scope restored after each test."""
import contextlib
import os
import sys
from typing import Dict

import gc

import pytest
import torch
import torch.utils.deterministic

sys.path.insert(0, os.path.dirname(__file__))

import mmext_init  # noqa: E402,F401  (activates the plugin)
from mmext_init import deferred  # noqa: E402


def pytest_configure(config) -> None:
    config.addinivalue_line(
        'markers', 'e2e: end-to-end runs of the stock mmdet/mmseg scripts '
        '(run by default; deselect with -m "not e2e")')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def save_ckpt(tmp_path):
    """Write ``{'state_dict': sd, 'meta': ...}`` to a .pth file, return its path."""
    counter = [0]

    def _save(state_dict: Dict[str, torch.Tensor], wrap: bool = True,
              name: str = None) -> str:
        counter[0] += 1
        path = tmp_path / (name or f'ckpt_{counter[0]}.pth')
        obj = {'state_dict': state_dict, 'meta': {'epoch': 1}} if wrap \
            else state_dict
        torch.save(obj, path)
        return str(path)

    return _save


@pytest.fixture(scope='session')
def runner_ckpt(tmp_path_factory):
    """A checkpoint written by a real stock MMEngine Runner (meta,
    message_hub with HistoryBuffers, optimizer state, numpy scalars)."""
    from runner_utils import ToyModel, run_runner
    work_dir = tmp_path_factory.mktemp('stock_run')
    with mmext_init.stock_mmengine():
        run_runner(str(work_dir), ToyModel())
    return str(work_dir / 'iter_2.pth')


@pytest.fixture
def nan_empty():
    """``torch.empty`` gives NaN while the test runs."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.utils.deterministic.fill_uninitialized_memory = before[2]


@pytest.fixture(autouse=True)
def _default_scope_restored():
    """``init_default_scope``, ``register_all_modules`` and Runners make a
    global ``DefaultScope`` current; later tests must not resolve types
    under it."""
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict = saved


@pytest.fixture
def spy_replays():
    """``spy_replays()`` starts recording the tensors deferred init computes
    (replays); it returns the set of their ids, filled from then on (until
    the test ends)."""
    with contextlib.ExitStack() as watching:
        yield lambda: watching.enter_context(deferred.watch_replays())


@pytest.fixture(autouse=True)
def _nothing_left_pending():
    """Whatever a test leaves pending computes, and the hooks go away."""
    yield
    deferred.materialize()
    gc.collect()
    assert deferred.pending_count() == 0 and not deferred.hooks_installed()
