"""Damaged checkpoints: every damaged file gives a finite load or
a clear error naming the file, never a half-loaded model. Targeted
regressions first, then a seeded fuzz.

In the fuzz each format runs in its own subprocess
(``tests/fuzz_worker.py``), with a timeout: a crash (segfault) or a hang
fails that format's test, naming the case, instead of killing the suite. Formats: zip ``.pth`` (a plain state
dict and a Runner-style checkpoint with meta/message_hub/optimizer), legacy
(non-zip) ``.pth``, ``.safetensors``, sharded indexes with safetensors and
with torch shards. Damage: truncation, flipped bytes (anywhere, and outside
tensor data: headers, pickles), zeroed blocks, at seeded offsets (for
indexes, in a shard or in the index JSON).
"""
import hashlib
import io
import json
import os
import pickle
import pickletools
import re
import subprocess
import sys
from collections import Counter
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS
from toy_models import Model, Trunk
from torch.utils.serialization import config as serialization_config

from mmext_init import CheckpointError, read_checkpoint
from mmext_init.checkpoint.zip_checks import verify_torch_zip

WORKER = os.path.join(os.path.dirname(__file__), 'fuzz_worker.py')
SEEDS = {'zip': 12, 'runner': 12, 'legacy': 12, 'safetensors': 12,
         'index-st': 8, 'index-pt': 8}
KINDS = {'index-st': 7, 'index-pt': 7}  # shard and index damage; others 4
ALLOWED = ('loaded', 'loaded-changed', 'error')
TIMEOUT = 120  # seconds per format; the whole file takes ~30 s of CPU


def _trunk_sd():
    trunk = Trunk()
    for p in trunk.parameters():
        nn.init.normal_(p)
    return {k: v.detach().clone() for k, v in trunk.state_dict().items()}


def _model(path):
    trunk = Trunk(init_cfg=dict(type='Pretrained', checkpoint=path))
    return Model(trunk), trunk


# -- targeted regressions: a clear error naming the file, never raw ---------
def _numpy_ckpt(path, legacy=False):
    """A checkpoint whose pickle holds a numpy array (pickled through
    ``_codecs.encode(..., 'latin1')``, as in Runner checkpoints)."""
    sd = _trunk_sd()
    torch.save({'state_dict': sd, 'meta': {'arr': np.arange(3.)}}, path,
               _use_new_zipfile_serialization=not legacy)
    return sd


def _replace_once(path, old, new):
    data = open(path, 'rb').read()
    assert data.count(old) == 1, old
    with open(path, 'wb') as f:
        f.write(data.replace(old, new))


def test_damaged_codec_name_without_crc_is_a_checkpoint_error(tmp_path):
    """Was ``LookupError: unknown encoding: la|in1`` (a byte flip in a zip
    .pth whose writer computed no CRC-32, so only the reader can tell)."""
    path = str(tmp_path / 'nocrc.pth')
    serialization_config.save.compute_crc32 = False
    try:
        _numpy_ckpt(path)
    finally:
        serialization_config.save.compute_crc32 = True
    _replace_once(path, b'latin1', b'la|in1')
    model, _ = _model(path)
    with pytest.raises(CheckpointError, match=r'nocrc\.pth: the file is '
                       r'truncated or corrupt.*LookupError'):
        model.init_weights()


def test_damaged_pickle_in_zip_fails_its_crc(tmp_path):
    path = str(tmp_path / 'flip.pth')
    _numpy_ckpt(path)
    _replace_once(path, b'latin1', b'la|in1')
    with pytest.raises(CheckpointError, match=r'flip\.pth: the zip structure '
                       r'is damaged \(record .*data\.pkl: .*CRC'):
        read_checkpoint(path)


def test_damaged_local_header_of_tensor_data(tmp_path):
    """A data record whose local header no longer matches the central
    directory: torch would read the tensor from shifted bytes."""
    path = str(tmp_path / 'header.pth')
    torch.save({'w': torch.ones(4)}, path)
    data = bytearray(open(path, 'rb').read())
    at = data.index(b'/data/0')  # first occurrence: the local header
    data[at + 6] = ord('9')
    open(path, 'wb').write(bytes(data))
    with pytest.raises(CheckpointError, match=r'header\.pth: the zip '
                       r'structure is damaged \(record .*data/0'):
        read_checkpoint(path)


def test_damaged_storage_key_in_legacy_pth_is_a_checkpoint_error(tmp_path):
    """Was ``AssertionError: storage key '...' not found in
    deserialized_objects`` (the legacy format has no checksums)."""
    path = str(tmp_path / 'legacy.pth')
    _numpy_ckpt(path, legacy=True)
    data = open(path, 'rb').read()
    f = io.BytesIO(data)
    for _ in range(4):  # magic number, protocol, system info, the object
        for _ in pickletools.genops(f):  # walks a pickle, builds nothing
            pass
    keys_at = f.tell()
    keys = pickle.load(f)  # the storage keys, written after the object
    first = keys[0].encode()
    at = data.index(first, keys_at)
    damaged = data[:at] + b'x' + data[at + 1:]
    open(path, 'wb').write(damaged)
    model, _ = _model(path)
    with pytest.raises(CheckpointError, match=r'legacy\.pth: the file is '
                       r'truncated or corrupt.*AssertionError'):
        model.init_weights()


def test_absurd_length_in_a_pickle_is_a_memory_error_naming_the_file(
        tmp_path):
    """A damaged opcode asking for exabytes: still a MemoryError (never
    swallowed), but one that is a CheckpointError naming the file."""
    path = str(tmp_path / 'huge.pth')
    _numpy_ckpt(path, legacy=True)
    data = bytearray(open(path, 'rb').read())
    stream = io.BytesIO(bytes(data))
    for _ in range(3):  # magic number, protocol, system info
        for _ in pickletools.genops(stream):
            pass
    at = next(pos for op, _, pos in pickletools.genops(stream)
              if op.name == 'BINPUT')
    data[at] = 0x96  # BYTEARRAY8: the next 8 bytes become its length
    open(path, 'wb').write(bytes(data))
    with pytest.raises(MemoryError) as info:
        read_checkpoint(path)
    assert isinstance(info.value, CheckpointError)
    assert 'out of memory reading checkpoint ' + path in str(info.value)


def test_non_finite_tensor_leaves_the_model_untouched(save_ckpt):
    """The NaN is found before any tensor is written: fc1 (copied before
    fc2 in key order) keeps its value, nothing is half-loaded."""
    sd = _trunk_sd()
    sd['fc2.weight'][1, 1] = float('inf')
    model, trunk = _model(save_ckpt(sd))
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    with pytest.raises(CheckpointError, match="'fc2.weight' holds NaN or Inf"):
        model.init_weights()
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_non_finite_tensor_leaves_a_deferred_model_without_file_data(
        save_ckpt):
    """Built through the registry (constructor init deferred and dropped
    for the copy): after the failure no tensor holds the file's values."""
    sd = _trunk_sd()
    sd['norm.bias'][0] = float('nan')
    MODELS.register_module('FuzzTrunkForNaN', module=Trunk, force=True)
    trunk = MODELS.build(dict(type='FuzzTrunkForNaN', init_cfg=dict(
        type='Pretrained', checkpoint=save_ckpt(sd))))
    with pytest.raises(CheckpointError, match="'norm.bias' holds NaN"):
        trunk.init_weights()
    for key, value in trunk.state_dict().items():
        assert torch.isfinite(value).all(), key
        assert not torch.equal(value, sd[key]), key


def test_zip_check_accepts_valid_archives(tmp_path):
    """TorchScript archives (deflated code records), non-ASCII file names,
    empty tensors, views and CRC-less files are not reported as damaged."""
    torch.jit.save(torch.jit.script(nn.Linear(3, 4)), str(tmp_path / 'j.pt'))
    verify_torch_zip(str(tmp_path / 'j.pt'), 'checkpoint')
    base = torch.randn(10)
    obj = {'empty': torch.empty(0), 'view': base[2:5], 'base': base,
           'half': torch.randn(3).half(), 'flag': torch.zeros(2).bool()}
    path = str(tmp_path / 'modèle ü.pth')
    torch.save(obj, path)
    ckpt, _ = read_checkpoint(path)
    assert all(torch.equal(ckpt[k], v) for k, v in obj.items())
    serialization_config.save.compute_crc32 = False
    try:
        torch.save(obj, path)
    finally:
        serialization_config.save.compute_crc32 = True
    assert torch.equal(read_checkpoint(path)[0]['view'], obj['view'])


# -- seeded fuzz, one subprocess per format --------------------------------
def expected_cases(fmt: str) -> int:
    return SEEDS[fmt] * KINDS.get(fmt, 4)


def parse(stdout: str) -> Tuple[List[str], Dict[str, dict]]:
    """Cases started, and results by case, from the worker's output."""
    started, results = [], {}
    for line in stdout.splitlines():
        if line.startswith('FUZZ start '):
            started.append(line[len('FUZZ start '):])
        elif line.startswith('FUZZ {'):
            result = json.loads(line[len('FUZZ '):])
            results[result['case']] = result
    return started, results


def run_worker(fmt: str, folder: str, worker: str = WORKER,
               timeout: float = TIMEOUT) -> Tuple[str, str, str]:
    """(stdout, stderr, failure) of the worker; failure names the case a
    crash or a hang happened in ('' if the worker exited cleanly)."""
    cmd = [sys.executable, worker, fmt, '--seeds', str(SEEDS[fmt]),
           '--dir', folder]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else \
            exc.stdout or ''
        started, _ = parse(out)
        return out, '', (f'hang: no result after {timeout} s, in case '
                         f'{started[-1] if started else "(setup)"}')
    if proc.returncode != 0:
        started, _ = parse(proc.stdout)
        return proc.stdout, proc.stderr, (
            f'worker exited with {proc.returncode} (negative: killed by a '
            f'signal) in case {started[-1] if started else "(setup)"}')
    return proc.stdout, proc.stderr, ''


@pytest.mark.parametrize('end, failure', [
    ('os.kill(os.getpid(), signal.SIGSEGV)', 'exited with -11 .* in case '
     'zip:flip:3'),
    ('time.sleep(60)', r'hang: no result after 3 s, in case zip:flip:3')])
def test_a_crash_or_hang_of_the_worker_fails_naming_the_case(
        tmp_path, end, failure):
    worker = tmp_path / 'worker.py'
    worker.write_text('import os, signal, time\n'
                      "print('FUZZ start zip:flip:3', flush=True)\n" + end)
    _, _, message = run_worker('zip', str(tmp_path), str(worker), timeout=3)
    assert re.search(failure, message), message


@pytest.mark.parametrize('fmt', list(SEEDS))
def test_damaged_checkpoint_loads_finite_or_names_the_file(fmt, tmp_path):
    stdout, stderr, failure = run_worker(fmt, str(tmp_path))
    assert not failure, f'{failure}\nstderr tail:\n{stderr[-3000:]}'
    started, results = parse(stdout)
    assert len(results) == len(started) == expected_cases(fmt), stderr[-3000:]
    bad = [r for r in results.values() if r['outcome'] not in ALLOWED]
    summary = Counter(r['outcome'] for r in results.values())
    print(f'{fmt}: {dict(summary)}')
    assert not bad, '\n'.join(
        f"{r['case']}: {r['outcome']}: {r['detail']}" for r in bad)
    assert summary['error'] > 0  # the damage did reach the reader
    damaged = damaged_digests(str(tmp_path))
    pristine = tree_digest(os.path.join(str(tmp_path), 'pristine'))
    assert len(damaged) == len(results)
    same = [case for case, digest in damaged.items() if digest == pristine]
    assert not same, f'left undamaged: {same}'
    # seeds give different damage (a truncation of the short index JSON
    # may repeat an offset: index-truncate-3 and -7 cut it alike)
    assert len(set(damaged.values())) >= 0.95 * len(damaged), \
        'the seeds repeat the damage'


def tree_digest(folder: str) -> str:
    """sha256 over the names and bytes of the files of ``folder``."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        digest.update(name.encode())
        with open(os.path.join(folder, name), 'rb') as f:
            digest.update(f.read())
    return digest.hexdigest()


def damaged_digests(folder: str) -> Dict[str, str]:
    """The digest of each case's damaged copy (``<kind>-<seed>`` folders
    the worker leaves behind)."""
    return {name: tree_digest(os.path.join(folder, name))
            for name in sorted(os.listdir(folder)) if name != 'pristine'
            and os.path.isdir(os.path.join(folder, name))}
