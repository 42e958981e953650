"""End-to-end fixtures: tiny data and stock checkpoints generated once per
session, and a runner for the *unchanged* mmdet/mmseg train scripts as
subprocesses (each run once per session, shared by the tests)."""
import copy
import glob
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

from mmext_init import read_checkpoint
from mmext_init.training.report import TRAINABLE_FILE

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def library_script(library: str, name: str) -> str:
    """``tools/<name>.py`` shipped inside the installed mmdet/mmseg.

    Example:
        >>> library_script('mmdet', 'train')  # doctest: +ELLIPSIS
        '.../mmdet/.mim/tools/train.py'
    """
    module = __import__(library)
    return os.path.join(os.path.dirname(module.__file__), '.mim', 'tools',
                        f'{name}.py')


def subprocess_env() -> Dict[str, str]:
    """Environment for the scripts: the hook module importable, 1 thread."""
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [HERE, os.environ.get('PYTHONPATH', '')]))


@pytest.fixture(scope='session')
def tiny_dir(tmp_path_factory) -> str:
    """Tiny data and stock Runner checkpoints (tools/make_tiny_data.py), in
    ``<basetemp>/tiny``: tests/test_readme_report.py uses the same path, and
    the tools only complete what is missing there."""
    path = tmp_path_factory.getbasetemp() / 'tiny'
    path.mkdir(exist_ok=True)
    out = str(path)
    subprocess.run([sys.executable, os.path.join(REPO, 'tools',
                                                 'make_tiny_data.py'),
                    '--out-dir', out], check=True)
    return out


@dataclass
class Run:
    """What a train run left behind (``*_rank<R>`` files listed by rank)."""
    config: str  # the derived config that was trained
    work_dir: str
    log: str  # rank 0's log file
    snapshots: List[Dict[str, torch.Tensor]]  # state_dict at before_train
    finals: List[Dict[str, torch.Tensor]]  # state_dict at after_train
    provenance_files: List[str]  # every init_provenance.json on disk
    provenance_writes: List[List[str]]  # per rank: files opened for writing

    @property
    def provenance(self) -> dict:
        assert len(self.provenance_files) == 1, self.provenance_files
        with open(self.provenance_files[0]) as f:
            return json.load(f)

    @property
    def trainable_file(self) -> str:
        """The run's ``trainable_params.json`` (exactly one under its work
        dir)."""
        files = glob.glob(os.path.join(self.work_dir, '**', TRAINABLE_FILE),
                          recursive=True)
        assert len(files) == 1, files
        return files[0]

    @property
    def trainable(self) -> dict:
        """The contents of :attr:`trainable_file`."""
        with open(self.trainable_file) as f:
            return json.load(f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _derived_config(tiny_dir: str, config: str, name: str, nproc: int,
                    extra_hooks: str, find_unused: bool) -> str:
    """``config`` + the snapshot hook (+ CPU DDP wrapper settings)."""
    derived = os.path.join(tiny_dir, f'{name}.py')
    with open(derived, 'w') as f:
        f.write(f"_base_ = {os.path.join(REPO, config)!r}\n"
                "custom_imports = dict(imports=['mmext_init', "
                "'mmext_init.examples.mmdet_models', "
                "'mmext_init.examples.mmseg_models', 'snapshot_hook'], "
                'allow_failed_imports=False)\n'
                f"custom_hooks = [{extra_hooks}"
                "dict(type='WeightSnapshotHook')]\n")
        if nproc > 1:  # CPU DDP: MMEngine's default is device_ids=[rank]
            f.write("model_wrapper_cfg = dict(type='MMDistributedDataParallel'"
                    ', device_ids=None, broadcast_buffers=False, '
                    f'find_unused_parameters={find_unused})\n')
    return derived


def train_command(tiny_dir: str, config: str, library: str, name: str,
                  nproc: int = 1, extra_hooks: str = '',
                  find_unused: bool = False) -> Tuple[List[str], str, str]:
    """The command running the library's own train.py on ``config`` plus
    the snapshot hook (``torchrun`` when ``nproc > 1``, DDP with
    ``find_unused_parameters=find_unused``), the derived config and the
    work dir ``<tiny_dir>/work_dirs/<name>``."""
    derived = _derived_config(tiny_dir, config, name, nproc, extra_hooks,
                              find_unused)
    work_dir = os.path.join(tiny_dir, 'work_dirs', name)
    script = library_script(library, 'train')
    cmd = [sys.executable, script, derived, '--work-dir', work_dir]
    if nproc > 1:
        cmd[1:2] = ['-m', 'torch.distributed.run',
                    f'--nproc_per_node={nproc}',
                    f'--master_port={_free_port()}', script]
        cmd += ['--launcher', 'pytorch']
    return cmd, derived, work_dir


@pytest.fixture(scope='session')
def train(tiny_dir) -> Callable[..., Run]:
    """``train(config, library, nproc=1, extra_hooks='', find_unused=False)``
    runs :func:`train_command`, which must succeed; returns a :class:`Run`.
    Each distinct call runs once."""
    done: Dict[Tuple[str, str, int, str, bool], Run] = {}

    def _train(config: str, library: str, nproc: int = 1,
               extra_hooks: str = '', find_unused: bool = False) -> Run:
        key = (config, library, nproc, extra_hooks, find_unused)
        if key in done:
            return done[key]
        name = f'{os.path.splitext(os.path.basename(config))[0]}_{nproc}' + \
            f'_{len(done)}'
        cmd, derived, work_dir = train_command(
            tiny_dir, config, library, name, nproc, extra_hooks, find_unused)
        proc = subprocess.run(cmd, cwd=tiny_dir, env=subprocess_env(),
                              text=True, capture_output=True)
        assert proc.returncode == 0, '\n'.join(
            [' '.join(cmd), proc.stdout[-3000:], proc.stderr[-5000:]])
        logs = sorted(glob.glob(os.path.join(work_dir, '*', '*.log')))
        assert len(logs) == 1, logs  # rank 0 only
        with open(logs[0]) as f:
            log = f.read()
        writes = []
        for rank in range(nproc):
            with open(os.path.join(
                    work_dir, f'provenance_writes_rank{rank}.json')) as f:
                writes.append(json.load(f))
        states = {stem: [torch.load(os.path.join(
            work_dir, f'{stem}_rank{r}.pth')) for r in range(nproc)]
            for stem in ('snapshot', 'final')}
        done[key] = Run(
            derived, work_dir, log, states['snapshot'], states['final'],
            glob.glob(os.path.join(work_dir, '**', 'init_provenance.json'),
                      recursive=True), writes)
        return done[key]

    return _train


def checkpoint_state(path: str) -> Dict[str, torch.Tensor]:
    """The ``state_dict`` of a Runner checkpoint (stock ``torch.load`` can't
    read those under torch >= 2.6; mmext_init's reader can)."""
    ckpt, _ = read_checkpoint(path)
    return ckpt['state_dict']


def assert_stack_rebuilds(model_cfg, checkpoints: List[str], library: str,
                          trained: Dict[str, torch.Tensor]) -> None:
    """``Pretrained(checkpoint=[base, delta])`` at the model root, on a
    freshly built ``model_cfg`` (a copy is changed), gives ``trained``
    bit for bit, key for key."""
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.init_cfg = dict(type='Pretrained', checkpoint=checkpoints)
    model_cfg.backbone.init_cfg = None  # the root entry loads it all
    init_default_scope(library)
    model = MODELS.build(model_cfg)
    model.init_weights()
    state = model.state_dict()
    assert state.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(state[key], value), key
