"""Benchmark: config to initialized, pretrained model -- stock MMEngine vs
mmext_init vs the floor, measured side by side in one run.

Each configuration runs in its own fresh process (interleaved over repeats):

* ``stock``: ``mmext_init.stock_mmengine()`` (plugin disabled): build, then
  ``init_weights()`` with ``Pretrained``;
* ``plugin``: the same with mmext_init active;
* ``floor``: allocate the parameters (no init), read the checkpoint through a
  memory map, copy it in.

Models are ViT-style stacks of ``BaseModule`` blocks with TruncNormal/Constant
``init_cfg``s and small inserted adapters (zero-init up projection):
``vit-b`` (~86M parameters), ``vit-l`` (~304M), ``vit-h`` (~630M).

Usage::

    python tools/bench_init.py [--sizes vit-b vit-l] [--repeats 3] [--json]

Prints the median wall time of build + ``init_weights`` and the peak RSS of
each configuration, and the ratios stock/plugin, plugin/floor and
plugin RSS / stock RSS.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import torch
import torch.nn as nn

SIZES = {'vit-b': (768, 12), 'vit-l': (1024, 24), 'vit-h': (1280, 32)}
MODES = ('stock', 'plugin', 'floor')


def build(dim: int, depth: int, init_cfg=None) -> nn.Module:
    """The benchmark model (imports mmengine lazily)."""
    from mmengine.model import BaseModule

    class Block(BaseModule):

        def __init__(self):
            super().__init__(init_cfg=[
                dict(type='TruncNormal', std=0.02, layer='Linear'),
                dict(type='Constant', val=1, layer='LayerNorm')])
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim,
                                                                    dim)

    class Adapter(BaseModule):

        def __init__(self):
            super().__init__(init_cfg=[
                dict(type='Kaiming', layer='Linear'),
                dict(type='Constant', val=0, override=dict(name='up'))])
            self.down, self.up = nn.Linear(dim, 64), nn.Linear(64, dim)

    class ViT(BaseModule):

        def __init__(self):
            super().__init__(init_cfg=init_cfg)
            self.patch_embed = nn.Conv2d(3, dim, 16, 16)
            self.blocks = nn.ModuleList([Block() for _ in range(depth)])
            self.adapters = nn.ModuleList([Adapter() for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)

    return ViT()


def write_checkpoint(size: str, folder: str) -> str:
    """A checkpoint of the model without adapters (fresh process memory)."""
    dim, depth = SIZES[size]
    path = os.path.join(folder, f'{size}.pth')
    model = build(dim, depth)
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith('adapters.')}
    torch.save({'state_dict': state, 'meta': {'size': size}}, path)
    return path


def child(mode: str, size: str, ckpt: str) -> Dict[str, float]:
    """One measurement in this (fresh) process."""
    dim, depth = SIZES[size]
    cfg = dict(type='Pretrained', checkpoint=ckpt)
    if mode == 'floor':
        import mmengine.model  # noqa: F401  (same imports as the others)
        start = time.perf_counter()
        with torch.device('meta'):
            model = build(dim, depth)
        model.to_empty(device='cpu')
        state = torch.load(ckpt, mmap=True, weights_only=True)['state_dict']
        with torch.no_grad():
            targets = model.state_dict(keep_vars=True)
            for key, value in state.items():
                targets[key].copy_(value)
    else:
        import mmext_init
        start = time.perf_counter()
        if mode == 'stock':
            with mmext_init.stock_mmengine():
                build(dim, depth, cfg).init_weights()
        else:
            cfg['on_missing'] = 'ignore'
            build(dim, depth, cfg).init_weights()
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(seconds=seconds, rss_mb=rss_mb)


def run(sizes: List[str], repeats: int) -> Dict[str, Dict[str, Dict]]:
    results: Dict[str, Dict[str, Dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            ckpt = subprocess.run(
                [sys.executable, __file__, '--write', size, folder],
                check=True, capture_output=True, text=True).stdout.strip()
            runs: Dict[str, List[Dict]] = {m: [] for m in MODES}
            for _ in range(repeats):  # interleaved
                for mode in MODES:
                    out = subprocess.run(
                        [sys.executable, __file__, '--child', mode, size,
                         ckpt], check=True, capture_output=True, text=True)
                    runs[mode].append(json.loads(out.stdout.splitlines()[-1]))
            results[size] = {
                m: dict(seconds=statistics.median(r['seconds'] for r in rs),
                        rss_mb=statistics.median(r['rss_mb'] for r in rs))
                for m, rs in runs.items()
            }
            os.remove(ckpt)
    return results


def table(results: Dict[str, Dict[str, Dict]]) -> str:
    lines = [f'{"model":<7}{"stock s":>9}{"plugin s":>10}{"floor s":>9}'
             f'{"stock/plugin":>14}{"plugin/floor":>14}{"stock MB":>10}'
             f'{"plugin MB":>11}{"floor MB":>10}{"RSS plugin/stock":>18}']
    for size, r in results.items():
        s, p, f = (r[m]['seconds'] for m in MODES)
        rs, rp, rf = (r[m]['rss_mb'] for m in MODES)
        lines.append(f'{size:<7}{s:>9.2f}{p:>10.2f}{f:>9.2f}{s / p:>14.2f}'
                     f'{p / f:>14.2f}{rs:>10.0f}{rp:>11.0f}{rf:>10.0f}'
                     f'{rp / rs:>18.2f}')
    return '\n'.join(lines)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == '--child':
        print(json.dumps(child(*argv[1:4])))
        return 0
    if argv and argv[0] == '--write':
        print(write_checkpoint(argv[1], argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', nargs='+', default=['vit-b', 'vit-l'],
                        choices=sorted(SIZES))
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    results = run(args.sizes, args.repeats)
    print(json.dumps(results, indent=1) if args.json else table(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
