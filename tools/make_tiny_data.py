"""Generate the tiny offline data and "pretrained" checkpoints the tiny
configs use: no downloads.

* ``data/tiny_coco``: a COCO-format detection set (coloured rectangles, two
  classes ``red``/``green``), ``train``/``val`` images and annotation files;
* ``data/tiny_seg``: a segmentation set (``img_dir``/``ann_dir``, labels
  0 = background, 1 = shape);
* ``checkpoints/*_stock_tiny.pth``: written by a real, stock MMEngine Runner
  (the installed mmdet/mmseg ``tools/train.py`` on the ``*_stock_tiny.py``
  configs, without mmext_init), so they carry ``meta``, ``message_hub`` and
  optimizer state like zoo checkpoints.

Usage::

    python tools/make_tiny_data.py [--out-dir .] [--only det|seg|ckpt]
                                   [--checkpoint NAME ...] [--force]

Everything lands under ``--out-dir`` (the directory you train from), and what
exists is kept unless ``--force``. ``--only ckpt`` also writes the data the
stock runs need if it is missing; ``--checkpoint NAME`` (repeatable) limits
the checkpoints to those named (e.g. ``retinanet_r18_stock_tiny.pth``).
Data and checkpoints are written to a temporary name first, so an
interrupted run never leaves a half-written directory that a later run would
skip. Seeded: the same files every time.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, List, Tuple

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = {1: (220, 20, 60), 2: (20, 220, 60)}  # category id -> RGB
STOCK_RUNS = {  # checkpoint name -> (library, stock config)
    'retinanet_r18_stock_tiny.pth':
    ('mmdet', 'configs/mmdet/retinanet_r18_stock_tiny.py'),
    'retinanet_swin_stock_tiny.pth':
    ('mmdet', 'configs/mmdet/retinanet_swin_stock_tiny.py'),
    'segformer_mit_stock_tiny.pth':
    ('mmseg', 'configs/mmseg/segformer_mit_stock_tiny.py'),
}


def _rectangles(rng: np.random.Generator, size: int,
                count: int) -> List[Tuple[int, int, int, int, int]]:
    boxes = []
    for _ in range(count):
        w, h = rng.integers(size // 6, size // 2, size=2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        boxes.append((int(x), int(y), int(w), int(h), int(rng.integers(1, 3))))
    return boxes


def make_detection(root: str, n_train: int = 16, n_val: int = 4,
                   size: int = 128) -> None:
    """Write ``root/{train,val}/*.jpg`` and ``root/annotations/*.json``.

    Example:
        >>> make_detection('data/tiny_coco')
    """
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    for split, count in (('train', n_train), ('val', n_val)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img = np.full((size, size, 3), 90, np.uint8)
            img += rng.integers(0, 30, img.shape, dtype=np.uint8)
            for x, y, w, h, cat in _rectangles(rng, size, 2):
                img[y:y + h, x:x + w] = COLORS[cat]
                annotations.append(
                    dict(id=len(annotations) + 1, image_id=i + 1,
                         category_id=cat, bbox=[x, y, w, h], area=w * h,
                         iscrowd=0))
            name = f'{split}_{i:03d}.jpg'
            Image.fromarray(img).save(os.path.join(root, split, name))
            images.append(dict(id=i + 1, file_name=name, width=size,
                               height=size))
        coco = dict(images=images, annotations=annotations,
                    categories=[dict(id=1, name='red'),
                                dict(id=2, name='green')])
        with open(os.path.join(root, 'annotations', f'{split}.json'),
                  'w') as f:
            json.dump(coco, f)


def make_segmentation(root: str, n_train: int = 8, n_val: int = 2,
                      size: int = 64) -> None:
    """Write ``root/img_dir/{train,val}/*.png`` and matching label maps.

    Example:
        >>> make_segmentation('data/tiny_seg')
    """
    rng = np.random.default_rng(1)
    for split, count in (('train', n_train), ('val', n_val)):
        for sub in ('img_dir', 'ann_dir'):
            os.makedirs(os.path.join(root, sub, split), exist_ok=True)
        for i in range(count):
            img = rng.integers(60, 120, (size, size, 3), dtype=np.uint8)
            label = np.zeros((size, size), np.uint8)
            for x, y, w, h, _ in _rectangles(rng, size, 2):
                img[y:y + h, x:x + w] = COLORS[1]
                label[y:y + h, x:x + w] = 1
            name = f'{split}_{i:03d}.png'
            Image.fromarray(img).save(os.path.join(root, 'img_dir', split,
                                                   name))
            Image.fromarray(label).save(os.path.join(root, 'ann_dir', split,
                                                     name))


def train_script(library: str) -> str:
    """The ``tools/train.py`` shipped inside the installed mmdet/mmseg."""
    module = __import__(library)
    return os.path.join(os.path.dirname(module.__file__), '.mim', 'tools',
                        'train.py')


def make_checkpoint(out_dir: str, name: str) -> None:
    """Train the stock tiny config a few iterations (installed train.py, no
    plugin); keep its last checkpoint as ``out_dir/checkpoints/name``.

    Example:
        >>> make_checkpoint('.', 'retinanet_r18_stock_tiny.pth')
    """
    library, config = STOCK_RUNS[name]
    with tempfile.TemporaryDirectory() as work_dir:
        proc = subprocess.run([
            sys.executable, train_script(library),
            os.path.join(REPO, config), '--work-dir', work_dir
        ], cwd=out_dir, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-5000:])
            raise SystemExit(f'[make_tiny_data] stock run of {config} failed')
        if 'mmext_init:' in proc.stdout:  # must be stock MMEngine alone
            raise SystemExit(f'[make_tiny_data] mmext_init was active in '
                             f'the stock run of {config}')
        with open(os.path.join(work_dir, 'last_checkpoint')) as f:
            last = f.read().strip()
        target = os.path.join(out_dir, 'checkpoints', name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(last, target + '.tmp')
        os.replace(target + '.tmp', target)


def write_atomically(root: str, writer: Callable[[str], None]) -> None:
    """Run ``writer`` on ``root + '.tmp'``, then move it to ``root``.

    Example:
        >>> write_atomically('data/tiny_coco', make_detection)
    """
    tmp = root + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    writer(tmp)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', default='.')
    parser.add_argument('--only', choices=['det', 'seg', 'ckpt'])
    parser.add_argument('--checkpoint', action='append',
                        choices=sorted(STOCK_RUNS),
                        help='write only these stock checkpoints '
                        '(repeatable; default: all)')
    parser.add_argument('--force', action='store_true')
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out_dir)

    def wanted(kind: str, path: str) -> bool:
        return (args.only in (None, kind)
                and (args.force or not os.path.exists(path)))

    datasets = {  # --only kind -> (directory, writer); library -> kind
        'det': (os.path.join(out, 'data', 'tiny_coco'), make_detection),
        'seg': (os.path.join(out, 'data', 'tiny_seg'), make_segmentation),
    }
    for kind, (root, writer) in datasets.items():
        if wanted(kind, root):
            write_atomically(root, writer)
            print(f'[make_tiny_data] wrote {root}')
    for name, (library, _) in STOCK_RUNS.items():
        path = os.path.join(out, 'checkpoints', name)
        if args.checkpoint and name not in args.checkpoint:
            continue
        if wanted('ckpt', path):
            root, writer = datasets['det' if library == 'mmdet' else 'seg']
            if not os.path.exists(root):  # the stock run trains on it
                write_atomically(root, writer)
                print(f'[make_tiny_data] wrote {root}')
            make_checkpoint(out, name)
            print(f'[make_tiny_data] wrote {path} (stock Runner run)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
