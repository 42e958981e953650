"""Generate the tiny offline data and "pretrained" checkpoints the tiny
configs use: no downloads.

* ``data/tiny_coco``: a COCO-format detection set (coloured rectangles, two
  classes ``red``/``green``), ``train``/``val`` images and annotation files;
* ``data/tiny_seg``: a segmentation set (``img_dir``/``ann_dir``, labels
  0 = background, 1 = shape);
* ``data/tiny_cls``: an ImageNet-style classification set (one folder per
  class: a coloured square's colour), ``pretrain`` (2 classes, what the
  stock mmpretrain checkpoints train on), ``train`` and ``val`` (4 classes);
* with ``--classes N``: N detection categories, N segmentation labels
  (0 = background, 1..N-1 one colour each, in :data:`PALETTE` order) and N
  classes in the classification ``train``/``val``; every class occurs in
  every split (the rectangles take the classes in turn). Without it, the
  sets above, byte for byte;
* ``checkpoints/*_stock_tiny.pth``: written by a real, stock MMEngine Runner
  (the installed mmdet/mmseg/mmpretrain ``tools/train.py`` on the
  ``*_stock_tiny.py`` configs, without mmext_init), so they carry ``meta``,
  ``message_hub`` and optimizer state like zoo checkpoints.

Usage::

    python tools/make_tiny_data.py [--out-dir .] [--only det|seg|cls|ckpt]
                                   [--classes N] [--checkpoint NAME ...]
                                   [--force]

Everything lands under ``--out-dir`` (the directory you train from), and what
exists is kept unless ``--force``. ``--only ckpt`` also writes the data the
stock runs need if it is missing; ``--checkpoint NAME`` (repeatable) limits
the checkpoints to those named (e.g. ``retinanet_r18_stock_tiny.pth``).
Data and checkpoints are written to a temporary name first, so an
interrupted run never leaves a half-written directory that a later run would
skip. Seeded: the same files every time.
"""
import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = {1: (220, 20, 60), 2: (20, 220, 60)}  # category id -> RGB
PALETTE = {  # --classes N: class i (from 1) takes the i-th colour
    'red': (220, 20, 60), 'green': (20, 220, 60), 'blue': (30, 60, 220),
    'yellow': (230, 200, 30), 'cyan': (20, 210, 220),
    'magenta': (210, 40, 200), 'orange': (240, 130, 20),
    'purple': (120, 40, 160), 'white': (245, 245, 245),
    'brown': (130, 80, 30)}
STOCK_RUNS = {  # checkpoint name -> (library, stock config)
    'retinanet_r18_stock_tiny.pth':
    ('mmdet', 'configs/mmdet/retinanet_r18_stock_tiny.py'),
    'retinanet_swin_stock_tiny.pth':
    ('mmdet', 'configs/mmdet/retinanet_swin_stock_tiny.py'),
    'segformer_mit_stock_tiny.pth':
    ('mmseg', 'configs/mmseg/segformer_mit_stock_tiny.py'),
    'vit_stock_tiny.pth':
    ('mmpretrain', 'configs/mmpretrain/vit_stock_tiny.py'),
    'convnext_stock_tiny.pth':
    ('mmpretrain', 'configs/mmpretrain/convnext_stock_tiny.py'),
}
KIND = {'mmdet': 'det', 'mmseg': 'seg', 'mmpretrain': 'cls'}  # its data
CLS_COLORS = {'blue': (30, 60, 220), 'green': (20, 220, 60),
              'red': (220, 20, 60), 'yellow': (230, 200, 30)}
CLS_SPLITS = {  # split -> (classes, images per class)
    'pretrain': (('green', 'red'), 8),
    'train': (tuple(CLS_COLORS), 4),
    'val': (tuple(CLS_COLORS), 2),
}


def class_colors(count: int) -> Dict[str, Tuple[int, int, int]]:
    """``count`` class names and colours: :data:`PALETTE` first, then
    ``class<i>`` with colours spread over the hue circle.

    Example:
        >>> list(class_colors(3))
        ['red', 'green', 'blue']
    """
    if count < 1:
        raise ValueError(f'--classes {count}: at least 1 class is needed')
    out = dict(list(PALETTE.items())[:count])
    for i in range(len(out), count):
        hue = (i * 0.618034) % 1.0
        rgb = [int(40 + 180 * max(0.0, min(1.0, abs((hue * 6 + k) % 6 - 3)
                                            - 1))) for k in (0, 4, 2)]
        out[f'class{i + 1}'] = tuple(rgb)
    return out


def _rectangles(rng: np.random.Generator, size: int,
                count: int) -> List[Tuple[int, int, int, int, int]]:
    boxes = []
    for _ in range(count):
        w, h = rng.integers(size // 6, size // 2, size=2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        boxes.append((int(x), int(y), int(w), int(h), int(rng.integers(1, 3))))
    return boxes


def make_detection(root: str, n_train: int = 16, n_val: int = 4,
                   size: int = 128, classes: Optional[int] = None) -> None:
    """Write ``root/{train,val}/*.jpg`` and ``root/annotations/*.json``
    (``classes`` categories, default the two of :data:`COLORS`).

    Example:
        >>> make_detection('data/tiny_coco', classes=5)
    """
    rng = np.random.default_rng(0)
    names = ('red', 'green') if classes is None else tuple(
        class_colors(classes))
    colors = COLORS if classes is None else {
        i + 1: c for i, c in enumerate(class_colors(classes).values())}
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    for split, count in (('train', n_train), ('val', n_val)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img = np.full((size, size, 3), 90, np.uint8)
            img += rng.integers(0, 30, img.shape, dtype=np.uint8)
            for x, y, w, h, cat in _rectangles(rng, size, 2):
                if classes is not None:  # in turn: every class occurs
                    cat = 1 + len(annotations) % classes
                img[y:y + h, x:x + w] = colors[cat]
                annotations.append(
                    dict(id=len(annotations) + 1, image_id=i + 1,
                         category_id=cat, bbox=[x, y, w, h], area=w * h,
                         iscrowd=0))
            name = f'{split}_{i:03d}.jpg'
            Image.fromarray(img).save(os.path.join(root, split, name))
            images.append(dict(id=i + 1, file_name=name, width=size,
                               height=size))
        coco = dict(images=images, annotations=annotations,
                    categories=[dict(id=i + 1, name=name)
                                for i, name in enumerate(names)])
        with open(os.path.join(root, 'annotations', f'{split}.json'),
                  'w') as f:
            json.dump(coco, f)


def make_segmentation(root: str, n_train: int = 8, n_val: int = 2,
                      size: int = 64, classes: int = 2) -> None:
    """Write ``root/img_dir/{train,val}/*.png`` and matching label maps
    (``classes`` labels: 0 the background, 1.. a colour each).

    Example:
        >>> make_segmentation('data/tiny_seg', classes=5)
    """
    if classes < 2:
        raise ValueError(f'--classes {classes}: a segmentation set needs '
                         'the background and at least one class')
    rng = np.random.default_rng(1)
    colors = list(class_colors(classes - 1).values())
    for split, count in (('train', n_train), ('val', n_val)):
        for sub in ('img_dir', 'ann_dir'):
            os.makedirs(os.path.join(root, sub, split), exist_ok=True)
        shapes = 0
        for i in range(count):
            img = rng.integers(60, 120, (size, size, 3), dtype=np.uint8)
            label = np.zeros((size, size), np.uint8)
            for x, y, w, h, _ in _rectangles(rng, size, 2):
                value = 1 + shapes % (classes - 1)  # in turn
                shapes += 1
                img[y:y + h, x:x + w] = colors[value - 1]
                label[y:y + h, x:x + w] = value
            name = f'{split}_{i:03d}.png'
            Image.fromarray(img).save(os.path.join(root, 'img_dir', split,
                                                   name))
            Image.fromarray(label).save(os.path.join(root, 'ann_dir', split,
                                                     name))


def make_classification(root: str, size: int = 32,
                        classes: Optional[int] = None) -> None:
    """Write ``root/<split>/<class>/*.png`` (:data:`CLS_SPLITS`; with
    ``classes``, that many in ``train``/``val``): a square of the class's
    colour on a noisy grey background.

    Example:
        >>> make_classification('data/tiny_cls')
    """
    rng = np.random.default_rng(2)
    colors = dict(CLS_COLORS)
    splits = dict(CLS_SPLITS)
    if classes is not None:
        colors.update(class_colors(classes))
        for split in ('train', 'val'):
            splits[split] = (tuple(class_colors(classes)), splits[split][1])
    for split, (names, count) in splits.items():
        for name in names:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                img = rng.integers(70, 130, (size, size, 3), dtype=np.uint8)
                w = int(rng.integers(size // 3, size * 2 // 3))
                x, y = rng.integers(0, size - w, size=2)
                img[y:y + w, x:x + w] = colors[name]
                Image.fromarray(img).save(
                    os.path.join(root, split, name, f'{i:03d}.png'))


def train_script(library: str) -> str:
    """The ``tools/train.py`` shipped inside the installed mmdet/mmseg/
    mmpretrain."""
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
    parser.add_argument('--only', choices=['det', 'seg', 'cls', 'ckpt'])
    parser.add_argument('--checkpoint', action='append',
                        choices=sorted(STOCK_RUNS),
                        help='write only these stock checkpoints '
                        '(repeatable; default: all)')
    parser.add_argument('--classes', type=int, default=None,
                        help='classes of each set: detection categories, '
                        'segmentation labels (background included), '
                        'classification train/val classes')
    parser.add_argument('--force', action='store_true')
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out_dir)
    if args.classes is not None and args.classes < 2:
        parser.error(f'--classes {args.classes}: at least 2')
    sized = {} if args.classes is None else {'classes': args.classes}

    def wanted(kind: str, path: str) -> bool:
        return (args.only in (None, kind)
                and (args.force or not os.path.exists(path)))

    datasets = {  # --only kind -> (directory, writer); library -> kind
        'det': (os.path.join(out, 'data', 'tiny_coco'),
                functools.partial(make_detection, **sized)),
        'seg': (os.path.join(out, 'data', 'tiny_seg'),
                functools.partial(make_segmentation, **sized)),
        'cls': (os.path.join(out, 'data', 'tiny_cls'),
                functools.partial(make_classification, **sized)),
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
            root, writer = datasets[KIND[library]]
            if not os.path.exists(root):  # the stock run trains on it
                write_atomically(root, writer.func)  # its classes
                print(f'[make_tiny_data] wrote {root}')
            make_checkpoint(out, name)
            print(f'[make_tiny_data] wrote {path} (stock Runner run)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
