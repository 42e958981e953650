"""Damaged-checkpoint fuzz worker, run in a subprocess by
``tests/test_fuzz_checkpoints.py`` (a crash or a hang then fails one test
instead of killing the suite).

For one checkpoint format it writes a pristine checkpoint of a small real
MMEngine model, then for each damage kind and seed damages a copy of it
(truncation, flipped bytes, zeroed blocks; for sharded checkpoints in a
shard or in the index JSON), loads it through ``Pretrained`` and classifies
the outcome. One line per case on stdout: ``FUZZ start <case>`` before it,
``FUZZ {json}`` after it (``outcome``, ``detail``).

Allowed outcomes: ``loaded`` (every tensor finite, every tensor the file
holds loaded and equal to it, the ledger agreeing), ``loaded-changed`` (the
same, but a damaged data byte changed a value silently: undetectable without
data checksums), ``error`` (a CheckpointError or InitConfigError naming the
damaged file, the model untouched by the load). Anything else is a
violation.

Usage:
    python tests/fuzz_worker.py zip --seeds 16 --dir /tmp/fuzz
"""
import argparse
import faulthandler
import io
import json
import os
import pickle
import pickletools
import random
import shutil
import struct
import sys
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import MessageHub, MMLogger
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from safetensors.torch import save_file

from mmext_init import (CheckpointError, InitConfigError, get_provenance,
                        open_checkpoint)
from mmext_init.checkpoint.restricted_pickle import unreconstructed_class

State = Dict[str, torch.Tensor]
FORMATS = ('zip', 'runner', 'legacy', 'safetensors', 'index-st', 'index-pt')
PLAIN_KINDS = ('truncate', 'flip', 'zero', 'flip-meta')
INDEX_KINDS = PLAIN_KINDS + ('index-truncate', 'index-flip', 'index-zero')
Span = Tuple[int, int]


@MODELS.register_module()
class FuzzNet(BaseModule):
    """Conv + BN (with buffers) + Linear + LayerNorm: ~3 KB of tensor data,
    about as much as the file's structure (headers, pickle)."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(32, 16)
        self.norm = nn.LayerNorm(16)


def pristine_state() -> State:
    """Values no constructor gives (random normal, BN statistics, counter)."""
    gen = torch.Generator().manual_seed(1234)
    state = {k: torch.randn(v.shape, generator=gen)
             for k, v in FuzzNet().state_dict().items()
             if v.is_floating_point()}
    state['bn.running_var'] = state['bn.running_var'].abs() + 0.5
    state['bn.num_batches_tracked'] = torch.tensor(7)
    return state


def runner_style(state: State) -> dict:
    """What an MMEngine Runner saves: meta with numpy values, message_hub
    with HistoryBuffers, optimizer state."""
    hub = MessageHub.get_instance('fuzz_worker')
    hub.update_scalar('train/loss', 0.5)
    hub.update_scalar('train/lr', np.float64(0.01))
    hub.update_info('iter', 3)
    params = [nn.Parameter(v.clone()) for v in state.values()
              if v.is_floating_point()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    meta = dict(epoch=1, iter=3, seed=np.int64(0), lr=np.float64(0.01),
                mmengine_version='0.10.7', dataset_meta=dict(classes=('a',
                                                                      'b')))
    return dict(meta=meta, state_dict=state, message_hub=hub.state_dict(),
                optimizer=optimizer.state_dict(), param_schedulers=[])


def _save(fmt: str, obj: dict, path: str) -> None:
    if fmt.endswith(('safetensors', 'index-st')):
        save_file(obj, path)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt != 'legacy')


def write_format(fmt: str, folder: str, state: State) -> List[str]:
    """Write the checkpoint of format ``fmt`` into ``folder``; return its
    file names, the one to load first."""
    name = {'zip': 'model.pth', 'runner': 'epoch_1.pth',
            'legacy': 'legacy.pth', 'safetensors': 'model.safetensors'}.get(fmt)
    if name is not None:
        obj = runner_style(state) if fmt == 'runner' else state \
            if fmt == 'safetensors' else {'state_dict': state,
                                          'meta': dict(arr=np.arange(4.))}
        _save(fmt, obj, os.path.join(folder, name))
        if fmt == 'legacy':
            stable_legacy_keys(os.path.join(folder, name))
        return [name]
    ext, index = {'index-st': ('.safetensors', 'model.safetensors.index.json'),
                  'index-pt': ('.bin', 'pytorch_model.bin.index.json')}[fmt]
    keys = sorted(state)
    shards = {f'part-1{ext}': keys[:len(keys) // 2],
              f'part-2{ext}': keys[len(keys) // 2:]}
    for shard, part in shards.items():
        _save(fmt, {k: state[k] for k in part}, os.path.join(folder, shard))
    weight_map = {k: shard for shard, part in shards.items() for k in part}
    with open(os.path.join(folder, index), 'w') as f:
        json.dump({'metadata': {'total_size': 0}, 'weight_map': weight_map}, f)
    return [index] + list(shards)


def _pickle_ends(data: bytes, count: int) -> List[int]:
    """Where each of the first ``count`` pickles of ``data`` ends."""
    stream, ends = io.BytesIO(data), []
    for _ in range(count):
        for _ in pickletools.genops(stream):  # walks, builds nothing
            pass
        ends.append(stream.tell())
    return ends


_ELEMENT_SIZES = {'torch.FloatStorage': 4, 'torch.LongStorage': 8}


def _unicode_op(text: str) -> bytes:
    """``text`` as pickle protocol 2 writes it (BINUNICODE)."""
    raw = text.encode()
    return b'X' + struct.pack('<I', len(raw)) + raw


def stable_legacy_keys(path: str) -> None:
    """Rewrite a legacy ``.pth`` so that it is the same in every run: its
    storage keys are memory addresses (their order, and so the order of the
    storages in the file, changes from run to run); they become counters in
    order of first use, the storages follow in that order."""
    with open(path, 'rb') as f:
        data = f.read()
    head, obj_end, keys_end = _pickle_ends(data, 5)[2:]
    used: Dict[str, Tuple[str, int]] = {}

    class Scan(pickle.Unpickler):  # records storages, builds nothing
        find_class = staticmethod(unreconstructed_class)

        def persistent_load(self, pid):
            used.setdefault(pid[2], (pid[1].qualname, pid[4]))

    Scan(io.BytesIO(data[head:obj_end])).load()
    blobs, at = {}, keys_end
    for key in pickle.loads(data[obj_end:keys_end]):  # file order
        size = 8 + used[key][1] * _ELEMENT_SIZES[used[key][0]]
        blobs[key], at = data[at:at + size], at + size
    names = {key: f'{i:06d}' for i, key in enumerate(used)}
    body = data[head:obj_end]
    for key, name in names.items():
        body = body.replace(_unicode_op(key), _unicode_op(name))
    with open(path, 'wb') as f:
        f.write(data[:head] + body +
                pickle.dumps(sorted(names.values()), protocol=2) +
                b''.join(blobs[key] for key in names))


def meta_spans(data: bytes) -> List[Span]:
    """Byte ranges of a checkpoint file that are not tensor data: zip
    headers, records and central directory; the pickles of a legacy
    ``.pth``; a safetensors header."""
    if data[:4] == b'PK\x03\x04':
        spans, at = [], 0
        for info in zipfile.ZipFile(io.BytesIO(data)).infolist():
            if '/data/' in info.filename:
                name_len, extra_len = struct.unpack(
                    '<HH', data[info.header_offset + 26:info.header_offset +
                                30])
                start = info.header_offset + 30 + name_len + extra_len
                spans.append((at, start))
                at = start + info.compress_size
        return spans + [(at, len(data))]
    if data[:2] == b'\x80\x02':  # legacy: 5 pickles, then the storages
        return [(0, _pickle_ends(data, 5)[-1])]
    return [(0, 8 + struct.unpack('<Q', data[:8])[0])]  # safetensors


def damage(data: bytes, kind: str, rng: random.Random) -> bytes:
    """``data`` truncated at, flipped at (1-3 bytes; ``flip-meta``: outside
    tensor data) or zeroed from seeded offsets."""
    buf = bytearray(data)
    if kind == 'truncate':
        return bytes(buf[:rng.randrange(len(buf))])
    if kind in ('flip', 'flip-meta'):
        spans = meta_spans(data) if kind == 'flip-meta' else [(0, len(buf))]
        offsets = [i for lo, hi in spans for i in range(lo, hi)]
        for _ in range(rng.randint(1, 3)):
            buf[rng.choice(offsets)] ^= rng.randrange(1, 256)
        return bytes(buf)
    if kind == 'zero':
        start = rng.randrange(len(buf))
        length = rng.choice((8, 64, 512))
        buf[start:start + length] = bytes(len(buf[start:start + length]))
        return bytes(buf)
    raise ValueError(f'unknown damage kind {kind!r}')


def damaged_copy(pristine: str, files: List[str], case_dir: str, kind: str,
                 rng: random.Random) -> str:
    """Copy the checkpoint into ``case_dir`` and damage one of its files
    (index kinds: the index; else the single file or a seeded shard);
    return the damaged file's path."""
    os.makedirs(case_dir)
    for name in files:
        shutil.copy(os.path.join(pristine, name), case_dir)
    if kind.startswith('index-'):
        target, kind = files[0], kind[len('index-'):]
    else:
        target = files[0] if len(files) == 1 else rng.choice(files[1:])
    path = os.path.join(case_dir, target)
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(damage(data, kind, rng))
    return path


def build(checkpoint: str, registry: bool) -> nn.Module:
    """The model with a root ``Pretrained``; through the registry its
    constructor init is deferred, called directly it runs."""
    cfg = dict(type='Pretrained', checkpoint=checkpoint)
    if registry:
        return MODELS.build(dict(type='FuzzNet', init_cfg=cfg))
    return FuzzNet(init_cfg=cfg)


def _floats_finite(state: State) -> Optional[str]:
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    return f'non-finite after init: {bad}' if bad else None


def check_error(exc: Exception, damaged: str, model: nn.Module,
                before: Optional[State], pristine: State) -> Tuple[str, str]:
    """A clean error: names the damaged file; the model holds no file data
    (called directly: every tensor as before init_weights; built through
    the registry, its constructor init deferred: no value from the file)."""
    text = f'{type(exc).__name__}: {exc}'
    if os.path.basename(damaged) not in str(exc):
        return 'unnamed-error', text
    state = model.state_dict()
    problem = _floats_finite(state)
    if problem:
        return 'non-finite', f'{problem}; {text}'
    if before is not None:
        changed = [k for k in state if not torch.equal(state[k], before[k])]
        if changed:
            return 'half-loaded', f'changed by the failed load: {changed}'
    from_file = [k for k, v in pristine.items()
                 if state[k].shape == v.shape and torch.equal(state[k], v)]
    if from_file:
        return 'half-loaded', f'file values after the error: {from_file}'
    return 'error', text


def check_success(model: nn.Module, checkpoint: str,
                  pristine: State) -> Tuple[str, str]:
    """A clean load: finite; each model tensor the (damaged) file holds with
    its shape equals the file's and is ``checkpoint`` in the ledger; nothing
    else is."""
    state = model.state_dict()
    problem = _floats_finite(state)
    if problem:
        return 'non-finite', problem
    source = open_checkpoint(checkpoint)
    entries = get_provenance(model).entries
    changed, partial = [], []
    keys = set(source.keys())
    for key, value in state.items():
        held = key in keys and tuple(source.shape(key)) == tuple(
            value.shape)
        loaded = entries[key].kind == 'checkpoint'
        if held != loaded:
            return 'ledger-mismatch', f'{key}: in file {held}, ledger {loaded}'
        if not held:
            partial.append(key)
            continue
        if not torch.equal(value, source.get(key).to(value.dtype)):
            return 'not-loaded', f'{key} differs from the file'
        if not torch.equal(value, pristine[key]):
            changed.append(key)
    if changed:
        return 'loaded-changed', f'changed: {changed}; not in file: {partial}'
    return 'loaded', f'not in file: {partial}' if partial else ''


def run_case(case: str, files: List[str], pristine_dir: str, case_dir: str,
             pristine: State) -> Tuple[str, str]:
    """One damaged checkpoint (``case`` is ``format:kind:seed``), loaded;
    returns ``(outcome, detail)``."""
    kind, seed = case.split(':')[1], int(case.split(':')[2])
    rng = random.Random(case)  # str seeds are stable across processes
    damaged = damaged_copy(pristine_dir, files, case_dir, kind, rng)
    checkpoint = os.path.join(case_dir, files[0])
    registry = seed % 2 == 0
    model = build(checkpoint, registry)
    before = None if registry else {
        k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.init_weights()
    except (CheckpointError, InitConfigError) as exc:
        return check_error(exc, damaged, model, before, pristine)
    except Exception as exc:  # noqa: BLE001 - what the fuzz looks for
        return 'raw-error', f'{type(exc).__name__}: {exc}'
    return check_success(model, checkpoint, pristine)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('format', choices=FORMATS)
    parser.add_argument('--seeds', type=int, default=8)
    parser.add_argument('--dir', required=True)
    args = parser.parse_args(argv)
    faulthandler.enable()
    MMLogger.get_instance('fuzz_worker', log_level='ERROR')  # quiet reports
    pristine_dir = os.path.join(args.dir, 'pristine')
    os.makedirs(pristine_dir)
    state = pristine_state()
    files = write_format(args.format, pristine_dir, state)
    kinds = INDEX_KINDS if args.format.startswith('index') else PLAIN_KINDS
    for kind in kinds:
        for seed in range(args.seeds):
            case = f'{args.format}:{kind}:{seed}'
            print(f'FUZZ start {case}', flush=True)
            case_dir = os.path.join(args.dir, f'{kind}-{seed}')
            outcome, detail = run_case(case, files, pristine_dir, case_dir,
                                       state)
            print('FUZZ ' + json.dumps(dict(case=case, outcome=outcome,
                                            detail=detail[:500])),
                  flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
