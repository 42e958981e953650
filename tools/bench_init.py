"""Benchmark: config to initialized, pretrained model -- stock MMEngine vs
mmext_init vs the floor, measured side by side in one run.

Each configuration runs in its own fresh process, interleaved over repeats:

* ``stock``: inside ``mmext_init.stock_mmengine()`` (plugin and deferred
  construction off): ``MODELS.build(cfg)``, then ``init_weights()`` with
  ``Pretrained``;
* ``plugin``: the same with mmext_init active (deferred constructor init,
  memory-mapped checkpoint, initializer work on loaded tensors skipped);
* ``floor``: allocate the parameters without init (meta device, then
  ``to_empty``), read the checkpoint through a memory map, copy it in.

Models: ViT-style stacks of ``BaseModule`` blocks with TruncNormal/Constant
``init_cfg``s and small inserted adapters (Kaiming, zero-init up projection),
``Pretrained`` from a checkpoint without the adapters: ``vit-b`` (~86M
parameters), ``vit-l`` (~304M), ``vit-h`` (~632M); plus ``swin-l``, mmdet's
``SwinTransformer`` (Swin-L, ~197M), which loads in its own ``init_weights``.

Usage::

    python tools/bench_init.py [--sizes vit-b vit-l vit-h swin-l] [--repeats 3] [--json]

(``--sizes vit-t``: a 2-block ViT, to check that the tool runs.)

Prints the median wall time of build + ``init_weights`` and the median peak
RSS (``ru_maxrss`` of the child, imports included) per configuration, and
the ratios stock/plugin, plugin/floor, plugin RSS / stock RSS and the same
for the growth of RSS over the start (peak minus the RSS after imports:
what the model and its checkpoint cost, without the ~300 MB interpreter),
and the bytes each process copied in through read() calls (``rchar``):
what every rank of a job reads again, where a memory map shares the page
cache.

Below the table, each size is checked against the targets
(``TARGETS``), each with the best value the same run allows a loader that
copies the weights into the model: stock/floor for the speed-up, and
(interpreter + one copy of the weights) / stock's peak for memory.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

SIZES = {'vit-b': (768, 12), 'vit-l': (1024, 24), 'vit-h': (1280, 32),
         'swin-l': (192, 0), 'vit-t': (192, 2)}  # vit-t: smoke test only
MODES = ('stock', 'plugin', 'floor')
# the targets: stock/plugin at least, plugin/floor at most, RSS plugin/stock below
TARGETS = dict(stock_over_plugin=8.0, plugin_over_floor=1.5,
               rss_plugin_over_stock=0.6)
SWIN_L = dict(type='mmdet.SwinTransformer', pretrain_img_size=384,
              embed_dims=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48],
              window_size=12)


def _register() -> None:
    """Register ``BenchViT`` in MMEngine's root ``MODELS`` (once)."""
    from mmengine.model import BaseModule
    from mmengine.registry import MODELS
    if 'BenchViT' in MODELS.module_dict:
        return

    class Block(BaseModule):

        def __init__(self, dim: int) -> None:
            super().__init__(init_cfg=[
                dict(type='TruncNormal', std=0.02, layer='Linear'),
                dict(type='Constant', val=1, layer='LayerNorm')])
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc1 = nn.Linear(dim, 4 * dim)
            self.fc2 = nn.Linear(4 * dim, dim)

    class Adapter(BaseModule):

        def __init__(self, dim: int) -> None:
            super().__init__(init_cfg=[
                dict(type='Kaiming', layer='Linear'),
                dict(type='Constant', val=0, override=dict(name='up'))])
            self.down, self.up = nn.Linear(dim, 64), nn.Linear(64, dim)

    @MODELS.register_module()
    class BenchViT(BaseModule):

        def __init__(self, dim: int, depth: int, init_cfg=None) -> None:
            super().__init__(init_cfg=init_cfg)
            self.patch_embed = nn.Conv2d(3, dim, 16, 16)
            self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
            self.adapters = nn.ModuleList(
                [Adapter(dim) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)


def model_cfg(size: str, ckpt: Optional[str] = None) -> Dict[str, Any]:
    """Config of the benchmark model ``size`` (``Pretrained`` from ``ckpt``)."""
    dim, depth = SIZES[size]
    cfg = dict(SWIN_L) if size == 'swin-l' else dict(type='BenchViT',
                                                     dim=dim, depth=depth)
    if ckpt is not None:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=ckpt)
    from mmengine.config import ConfigDict
    return ConfigDict(cfg)  # as from a config file (Swin reads attributes)


def build(size: str, ckpt: Optional[str] = None) -> nn.Module:
    """``MODELS.build`` of the benchmark model (imports lazily)."""
    from mmengine.registry import MODELS
    _register()
    if size == 'swin-l':
        import mmdet.models  # noqa: F401  (registers SwinTransformer)
    return MODELS.build(model_cfg(size, ckpt))


class NoInit(TorchDispatchMode):
    """Allocate without init: in-place ops writing a parameter are dropped
    (the floor where the meta device cannot build the model, e.g. Swin)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if (isinstance(args[0] if args else None, nn.Parameter)
                and func._schema.name.endswith('_')
                and func._schema.arguments[0].alias_info is not None):
            return args[0]
        return func(*args, **(kwargs or {}))


def allocate(size: str) -> nn.Module:
    """The model with uninitialized parameters (buffers as built)."""
    if size == 'swin-l':
        with NoInit():
            return build(size)
    with torch.device('meta'):
        model = build(size)
    return model.to_empty(device='cpu')


def write_checkpoint(size: str, folder: str) -> str:
    """A checkpoint of the model without adapters (fresh process memory)."""
    path = os.path.join(folder, f'{size}.pth')
    state = {k: torch.randn(v.shape) * 0.02 if v.is_floating_point() else v
             for k, v in allocate(size).state_dict().items()
             if not k.startswith('adapters.')}
    if size == 'swin-l':  # Swin reads a detector checkpoint ('backbone.')
        state = {f'backbone.{k}': v for k, v in state.items()}
    torch.save({'state_dict': state, 'meta': {'size': size}}, path)
    return path


def child(mode: str, size: str, ckpt: str) -> Dict[str, float]:
    """One measurement in this (fresh) process."""
    import mmengine.model  # noqa: F401  (same imports everywhere)
    if size == 'swin-l':
        import mmdet.models  # noqa: F401
    if mode != 'floor':
        import mmext_init
        from mmengine.logging import MMLogger
        MMLogger.get_current_instance()  # logger creation not timed
    _register()
    base_mb = _current_rss_mb()
    read_before = _read_syscall_bytes()
    start = time.perf_counter()
    if mode == 'floor':
        model = allocate(size)
        state = torch.load(ckpt, mmap=True, weights_only=True)['state_dict']
        with torch.no_grad():
            targets = model.state_dict(keep_vars=True)
            for key, value in state.items():
                targets[key.replace('backbone.', '', 1)].copy_(value)
    elif mode == 'stock':
        with mmext_init.stock_mmengine():
            model = build(size, ckpt)
            model.init_weights()
    else:
        model = build(size, ckpt)
        model.init_weights()
    seconds = time.perf_counter() - start  # ``model`` is alive: freeing its
    # memory is not timed (in no mode)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    read_mb = (_read_syscall_bytes() - read_before) / 2**20
    return dict(seconds=seconds, rss_mb=rss_mb, base_mb=base_mb,
                read_mb=read_mb)


def _proc_number(path: str, field: str) -> int:
    """The number after ``field`` in a /proc file (0 where there is none)."""
    try:
        with open(path) as f:
            return next(int(line.split()[1]) for line in f
                        if line.startswith(field))
    except (OSError, StopIteration):
        return 0


def _read_syscall_bytes() -> int:
    """Bytes this process copied in through read() calls so far (``rchar``
    of /proc/self/io): a checkpoint read through a memory map adds ~0 (its
    bytes stay in the page cache, shared by every process mapping it),
    ``torch.load`` without a map adds the whole file, per process."""
    return _proc_number('/proc/self/io', 'rchar:')


def _current_rss_mb() -> float:
    """Resident memory now (the interpreter and its imports, before the
    timed part); peak RSS minus this is what building the model cost."""
    return _proc_number('/proc/self/status', 'VmRSS:') / 1024


def _sub(*args: str) -> str:
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    out = subprocess.run([sys.executable, __file__, *args], check=True,
                         capture_output=True, text=True, env=env)
    return out.stdout.strip().splitlines()[-1]


def available(size: str) -> bool:
    if size != 'swin-l':
        return True
    try:
        import mmdet  # noqa: F401
        return True
    except ImportError:
        return False


def run(sizes: List[str], repeats: int) -> Dict[str, Dict[str, Any]]:
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            ckpt = _sub('--write', size, folder)
            runs: Dict[str, List[Dict]] = {m: [] for m in MODES}
            for _ in range(repeats):  # interleaved
                for mode in MODES:
                    runs[mode].append(
                        json.loads(_sub('--child', mode, size, ckpt)))
            row: Dict[str, Any] = {
                m: dict(seconds=statistics.median(r['seconds'] for r in rs),
                        rss_mb=statistics.median(r['rss_mb'] for r in rs),
                        base_mb=statistics.median(r['base_mb'] for r in rs),
                        read_mb=statistics.median(r['read_mb'] for r in rs),
                        runs=rs)
                for m, rs in runs.items()
            }
            s, p, f = (row[m]['seconds'] for m in MODES)
            grown = {m: row[m]['rss_mb'] - row[m]['base_mb'] for m in MODES}
            row['checkpoint_mb'] = os.path.getsize(ckpt) / 2**20
            stock_rss = row['stock']['rss_mb']
            row['ratios'] = dict(stock_over_plugin=s / p,
                                 plugin_over_floor=p / f,
                                 stock_over_floor=s / f,
                                 rss_plugin_over_stock=row['plugin']['rss_mb']
                                 / stock_rss,
                                 rss_limit_over_stock=(
                                     row['plugin']['base_mb'] +
                                     row['checkpoint_mb']) / stock_rss,
                                 grown_plugin_over_stock=grown['plugin'] /
                                 grown['stock'])
            results[size] = row
            os.remove(ckpt)
    return results


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f
                       if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return (f'{os.cpu_count()} cores {cpu}, torch {torch.__version__}, '
            f'Python {platform.python_version()}')


def table(results: Dict[str, Dict[str, Any]]) -> str:
    lines = [f'{"model":<7}{"stock s":>9}{"plugin s":>10}{"floor s":>9}'
             f'{"stock/plugin":>14}{"plugin/floor":>14}{"stock/floor":>13}'
             f'{"stock MB":>10}'
             f'{"plugin MB":>11}{"floor MB":>10}{"RSS plugin/stock":>18}'
             f'{"growth plugin/stock":>21}{"read() MB stock/plugin":>24}']
    for size, r in results.items():
        s, p, f = (r[m]['seconds'] for m in MODES)
        rs, rp, rf = (r[m]['rss_mb'] for m in MODES)
        q = r['ratios']
        lines.append(f'{size:<7}{s:>9.2f}{p:>10.2f}{f:>9.2f}'
                     f'{q["stock_over_plugin"]:>14.2f}'
                     f'{q["plugin_over_floor"]:>14.2f}'
                     f'{q["stock_over_floor"]:>13.2f}{rs:>10.0f}{rp:>11.0f}'
                     f'{rf:>10.0f}{q["rss_plugin_over_stock"]:>18.2f}'
                     f'{q["grown_plugin_over_stock"]:>21.2f}'
                     f'{_pair(r["stock"]["read_mb"], r["plugin"]["read_mb"])}')
    return '\n'.join(lines)


def target_lines(results: Dict[str, Dict[str, Any]]) -> str:
    """One line per size: each target, met or not, with the best
    value a loader that copies the weights could reach in the same run."""
    lines = [f'targets: stock/plugin >= {TARGETS["stock_over_plugin"]:g}, '
             f'plugin/floor <= {TARGETS["plugin_over_floor"]:g}, '
             f'RSS plugin/stock < {TARGETS["rss_plugin_over_stock"]:g}']
    for size, r in results.items():
        q = r['ratios']
        speed = q['stock_over_plugin'] >= TARGETS['stock_over_plugin']
        floor = q['plugin_over_floor'] <= TARGETS['plugin_over_floor']
        rss = q['rss_plugin_over_stock'] < TARGETS['rss_plugin_over_stock']
        lines.append(
            f'{size:<7}{_verdict(speed)} {q["stock_over_plugin"]:.2f} '
            f'(stock/floor {q["stock_over_floor"]:.2f})   {_verdict(floor)} '
            f'{q["plugin_over_floor"]:.2f}   {_verdict(rss)} '
            f'{q["rss_plugin_over_stock"]:.2f} (interpreter + weights '
            f'{q["rss_limit_over_stock"]:.2f})')
    return '\n'.join(lines)


def _verdict(met: bool) -> str:
    return 'met' if met else 'NOT met'


def _pair(a: float, b: float) -> str:
    return f'{f"{a:.0f} / {b:.0f}":>24}'


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == '--child':
        print(json.dumps(child(*argv[1:4])))
        return 0
    if argv and argv[0] == '--write':
        print(write_checkpoint(argv[1], argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', nargs='+', choices=sorted(SIZES),
                        default=['vit-b', 'vit-l', 'vit-h', 'swin-l'])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes if available(s)]
    results = run(sizes, args.repeats)
    if args.json:
        print(json.dumps(dict(machine=machine(), results=results), indent=1))
    else:
        print(f'# {machine()}, median of {args.repeats}')
        print(table(results))
        print(target_lines(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
