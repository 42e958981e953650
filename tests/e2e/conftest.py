"""End-to-end fixtures: tiny data and stock checkpoints generated once, and a
runner for the *unchanged* mmdet/mmseg train scripts as subprocesses."""
import glob
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List

import pytest
import torch

from mmext_init import read_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def library_script(library: str, name: str) -> str:
    """``tools/<name>.py`` shipped inside the installed mmdet/mmseg."""
    module = __import__(library)
    return os.path.join(os.path.dirname(module.__file__), '.mim', 'tools',
                        f'{name}.py')


@pytest.fixture(scope='session')
def tiny_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp('tiny'))
    subprocess.run([sys.executable, os.path.join(REPO, 'tools',
                                                 'make_tiny_data.py'),
                    '--out-dir', out], check=True)
    return out


@dataclass
class Run:
    """What a train run left behind."""
    work_dir: str
    log: str
    snapshots: List[Dict[str, torch.Tensor]]
    provenance_files: List[str]

    @property
    def provenance(self) -> dict:
        assert len(self.provenance_files) == 1, self.provenance_files
        return json.load(open(self.provenance_files[0]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def train(tiny_dir):
    """``train(config, library, nproc=1)`` runs the library's own train.py on
    ``config`` plus the snapshot hook; returns a :class:`Run`."""

    def _train(config: str, library: str, nproc: int = 1,
               extra_hooks: str = '') -> Run:
        name = os.path.splitext(os.path.basename(config))[0] + f'_{nproc}'
        derived = os.path.join(tiny_dir, f'{name}.py')
        with open(derived, 'w') as f:
            f.write(f"_base_ = {os.path.join(REPO, config)!r}\n"
                    "custom_imports = dict(imports=['mmext_init', "
                    "'mmext_examples', 'snapshot_hook'], "
                    'allow_failed_imports=False)\n'
                    f"custom_hooks = [{extra_hooks}"
                    "dict(type='WeightSnapshotHook')]\n")
            if nproc > 1:  # CPU DDP: MMEngine's default device_ids=[rank]
                f.write("model_wrapper_cfg = dict(type='MMDistributedData"
                        "Parallel', device_ids=None, broadcast_buffers=False)"
                        '\n')
        work_dir = os.path.join(tiny_dir, 'work_dirs', name)
        script = library_script(library, 'train')
        if nproc == 1:
            cmd = [sys.executable, script, derived, '--work-dir', work_dir]
        else:
            cmd = [sys.executable, '-m', 'torch.distributed.run',
                   f'--nproc_per_node={nproc}', f'--master_port={_free_port()}',
                   script, derived, '--work-dir', work_dir,
                   '--launcher', 'pytorch']
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [HERE, os.environ.get('PYTHONPATH', '')]), OMP_NUM_THREADS='1')
        proc = subprocess.run(cmd, cwd=tiny_dir, env=env, text=True,
                              capture_output=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        logs = sorted(glob.glob(os.path.join(work_dir, '*', '*.log')))
        snapshots = [torch.load(p) for p in sorted(
            glob.glob(os.path.join(work_dir, 'snapshot_rank*.pth')))]
        return Run(work_dir, open(logs[-1]).read(), snapshots,
                   glob.glob(os.path.join(work_dir, '**',
                                          'init_provenance.json'),
                             recursive=True))

    return _train


def checkpoint_state(tiny_dir: str, name: str) -> Dict[str, torch.Tensor]:
    ckpt, _ = read_checkpoint(os.path.join(tiny_dir, 'checkpoints', name))
    return ckpt['state_dict']
