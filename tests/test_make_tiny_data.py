"""tools/make_tiny_data.py: the data part (seeded, valid, idempotent). The
checkpoint part (stock Runner runs) is exercised by tests/e2e."""
import filecmp
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'make_tiny_data', os.path.join(REPO, 'tools', 'make_tiny_data.py'))
make_tiny_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_tiny_data)


def _same_tree(a: str, b: str) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files,
                                           shallow=False)
    return not mismatch and not errors and all(
        _same_tree(os.path.join(a, d), os.path.join(b, d))
        for d in cmp.common_dirs)


def test_detection_set_is_seeded_and_valid_coco(tmp_path):
    make_tiny_data.make_detection(str(tmp_path / 'a'))
    make_tiny_data.make_detection(str(tmp_path / 'b'))
    assert _same_tree(str(tmp_path / 'a'), str(tmp_path / 'b'))
    for split in ('train', 'val'):
        with open(tmp_path / 'a' / 'annotations' / f'{split}.json') as f:
            coco = json.load(f)
        categories = {c['id'] for c in coco['categories']}
        images = {i['id']: i for i in coco['images']}
        assert categories == {1, 2} and len(images) >= 4
        annotated = {a['image_id'] for a in coco['annotations']}
        assert annotated == set(images)  # no image without a box
        for ann in coco['annotations']:
            img = images[ann['image_id']]
            x, y, w, h = ann['bbox']
            assert ann['category_id'] in categories
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img['width'] and y + h <= img['height']
        for img in images.values():
            with Image.open(tmp_path / 'a' / split / img['file_name']) as im:
                assert im.size == (img['width'], img['height'])


def test_segmentation_set_is_seeded_and_labels_match(tmp_path):
    make_tiny_data.make_segmentation(str(tmp_path / 'a'))
    make_tiny_data.make_segmentation(str(tmp_path / 'b'))
    assert _same_tree(str(tmp_path / 'a'), str(tmp_path / 'b'))
    for split in ('train', 'val'):
        names = sorted(os.listdir(tmp_path / 'a' / 'img_dir' / split))
        assert names == sorted(os.listdir(tmp_path / 'a' / 'ann_dir' / split))
        for name in names:
            img = np.array(Image.open(tmp_path / 'a' / 'img_dir' / split /
                                      name))
            label = np.array(Image.open(tmp_path / 'a' / 'ann_dir' / split /
                                        name))
            assert img.shape[:2] == label.shape
            assert set(np.unique(label)) == {0, 1}
            shape = np.all(img == make_tiny_data.COLORS[1], axis=-1)
            assert np.array_equal(shape, label == 1)


def test_cli_is_idempotent_and_force_rewrites(tmp_path):
    out = str(tmp_path)
    assert make_tiny_data.main(['--out-dir', out, '--only', 'det']) == 0
    root = tmp_path / 'data' / 'tiny_coco'
    marker = root / 'annotations' / 'train.json'
    stamp = os.stat(marker).st_mtime_ns
    assert not (tmp_path / 'data' / 'tiny_seg').exists()  # --only det
    assert not (tmp_path / 'data' / 'tiny_coco.tmp').exists()
    make_tiny_data.main(['--out-dir', out, '--only', 'det'])
    assert os.stat(marker).st_mtime_ns == stamp  # kept
    (root / 'stale.txt').write_text('x')
    make_tiny_data.main(['--out-dir', out, '--only', 'det', '--force'])
    assert not (root / 'stale.txt').exists()  # rewritten from scratch


def test_checkpoint_option_limits_the_stock_runs(tmp_path):
    """``--checkpoint NAME`` touches that checkpoint only: with it present,
    nothing runs and nothing else (data, other checkpoints) is written."""
    ckpts = tmp_path / 'checkpoints'
    ckpts.mkdir()
    (ckpts / 'retinanet_r18_stock_tiny.pth').write_bytes(b'kept')
    assert make_tiny_data.main([
        '--out-dir', str(tmp_path), '--only', 'ckpt', '--checkpoint',
        'retinanet_r18_stock_tiny.pth'
    ]) == 0
    assert sorted(os.listdir(ckpts)) == ['retinanet_r18_stock_tiny.pth']
    assert (ckpts / 'retinanet_r18_stock_tiny.pth').read_bytes() == b'kept'
    assert not (tmp_path / 'data').exists()
    with pytest.raises(SystemExit):  # argparse: not one of the stock runs
        make_tiny_data.main(['--out-dir', str(tmp_path), '--checkpoint',
                             'other.pth'])


def test_classes_option_gives_every_class_in_every_split(tmp_path):
    """``--classes 5``: five detection categories, five segmentation labels
    (background and four colours, each label painted in its colour), five
    classification classes; every one occurs in every split. Without it,
    the default sets, unchanged."""
    out = str(tmp_path)
    for kind in ('det', 'seg', 'cls'):
        assert make_tiny_data.main(['--out-dir', out, '--only', kind,
                                    '--classes', '5']) == 0
    colors = list(make_tiny_data.class_colors(5).values())
    for split in ('train', 'val'):
        with open(tmp_path / 'data' / 'tiny_coco' / 'annotations' /
                  f'{split}.json') as f:
            coco = json.load(f)
        assert [c['id'] for c in coco['categories']] == [1, 2, 3, 4, 5]
        assert {a['category_id'] for a in coco['annotations']} == \
            {1, 2, 3, 4, 5}
        seg = tmp_path / 'data' / 'tiny_seg'
        seen = set()
        for name in sorted(os.listdir(seg / 'ann_dir' / split)):
            label = np.array(Image.open(seg / 'ann_dir' / split / name))
            img = np.array(Image.open(seg / 'img_dir' / split / name))
            seen |= set(np.unique(label).tolist())
            for value in range(1, 5):
                painted = np.all(img == colors[value - 1], axis=-1)
                assert np.array_equal(painted, label == value), (name, value)
        assert seen == {0, 1, 2, 3, 4}, split
        assert len(os.listdir(tmp_path / 'data' / 'tiny_cls' / split)) == 5
    assert sorted(os.listdir(tmp_path / 'data' / 'tiny_cls' / 'pretrain')) \
        == ['green', 'red']
    make_tiny_data.make_segmentation(str(tmp_path / 'default'))
    make_tiny_data.make_segmentation(str(tmp_path / 'two'), classes=2)
    assert _same_tree(str(tmp_path / 'default'), str(tmp_path / 'two'))
    with pytest.raises(SystemExit):
        make_tiny_data.main(['--out-dir', out, '--classes', '1'])


def test_classification_set_is_seeded_and_images_show_their_class(tmp_path):
    """The default ``data/tiny_cls``: ``pretrain`` with 2 classes, ``train``
    and ``val`` with 4 (the folders mmpretrain's ``CustomDataset`` reads as
    classes), seeded; every image holds a square of its class's colour."""
    make_tiny_data.make_classification(str(tmp_path / 'a'))
    make_tiny_data.make_classification(str(tmp_path / 'b'))
    assert _same_tree(str(tmp_path / 'a'), str(tmp_path / 'b'))
    for split, (classes, count) in make_tiny_data.CLS_SPLITS.items():
        assert sorted(os.listdir(tmp_path / 'a' / split)) == sorted(classes)
        for name in classes:
            files = sorted(os.listdir(tmp_path / 'a' / split / name))
            assert len(files) == count
            for file in files:
                img = np.array(Image.open(tmp_path / 'a' / split / name /
                                          file))
                painted = np.all(img == make_tiny_data.CLS_COLORS[name], -1)
                assert img.shape == (32, 32, 3) and painted.sum() >= 100
    assert len(make_tiny_data.CLS_SPLITS['pretrain'][0]) == 2
    assert len(make_tiny_data.CLS_SPLITS['train'][0]) == 4
