"""The zoo subset: fixed configs shipped with mmdet and mmseg, built as
shipped (their checkpoint names given generated files in a temporary
``TORCH_HOME``), run through tools/zoo_sweep.py (stock and plugin in fresh
processes); every one must PASS (a SKIP fails here: these configs build).
The ``URL_CASES`` must load the file of their checkpoint name, to the same
bits as stock, and give stock's state dict and forward output.

The selected configs are swept once, in parallel (``-j 2``), by a
module-scoped fixture; each test asserts one config's verdict.
"""
import json
import os
import re
import subprocess
import sys
from typing import Dict, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TOOLS = os.path.join(REPO, 'tools')
sys.path.insert(0, TOOLS)

from zoo_sweep import format_line  # noqa: E402
from zoo_urls import checkpoint_url  # noqa: E402

pytestmark = pytest.mark.e2e

SUBSET = [
    # two-stage with RoI heads
    'mmdet:mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'mmdet:nas_fpn/retinanet_r50_nasfpn_crop640-50e_coco.py',
    # DETR variant
    'mmdet:deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    'mmdet:efficientnet/retinanet_effb3_fpn_8xb4-crop896-1x_coco.py',
    'mmdet:swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py',
    'mmdet:yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py',
    'mmseg:vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py',
    'mmseg:swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_'
    'ade20k-512x512.py',
    'mmseg:segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
    'mmseg:beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py',
    'mmseg:pidnet/pidnet-s_2xb6-120k_1024x1024-cityscapes.py',
    'mmseg:fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024.py',
]
URL_CASES = {  # config -> the checkpoint name it ships with
    'mmseg:pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py':
        'open-mmlab://resnet50_v1c',
    'mmseg:segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py':
        'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/'
        'segformer/mit_b0_20220624-7e0fe6dd.pth',
    'mmdet:faster_rcnn/faster-rcnn_r50-caffe_fpn_1x_coco.py':
        'open-mmlab://detectron2/resnet50_caffe',
    'mmdet:hrnet/faster-rcnn_hrnetv2p-w32-1x_coco.py':
        'open-mmlab://msra/hrnetv2_w32',
    'mmdet:retinanet/retinanet_r50_fpn_1x_coco.py': 'torchvision://resnet50',
}
SUBSET += [c for c in URL_CASES if c not in SUBSET]
SWEEP_TIMEOUT = 1200


@pytest.fixture(scope='module')
def sweep(request, tmp_path_factory) -> Tuple[Dict[str, dict], str]:
    """Sweep the configs of the selected tests; ``({name: result}, log)``."""
    selected = sorted({item.callspec.params['config']
                       for item in request.session.items
                       if getattr(item, 'originalname', '') in (
                           'test_zoo_config', 'test_zoo_url_checkpoint')})
    only = '|'.join(f'^{re.escape(c)}$' for c in selected)
    out = tmp_path_factory.mktemp('zoo') / 'zoo.json'
    proc = subprocess.run(
        [sys.executable, os.path.join(TOOLS, 'zoo_sweep.py'), '--only', only,
         '-j', '2', '--json', str(out)], capture_output=True, text=True,
        timeout=SWEEP_TIMEOUT)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        results = json.load(f)['results']
    return {f"{r['package']}:{r['config']}": r for r in results}, proc.stdout


@pytest.mark.parametrize('config', SUBSET)
def test_zoo_config(sweep, config):
    results, log = sweep
    assert config in results, f'{config} was not swept:\n{log[-2000:]}'
    assert results[config]['status'] == 'PASS', format_line(results[config])


@pytest.mark.parametrize('config', sorted(URL_CASES))
def test_zoo_url_checkpoint(sweep, config):
    results, log = sweep
    assert config in results, f'{config} was not swept:\n{log[-2000:]}'
    result, name = results[config], URL_CASES[config]
    record, = [r for r in result['shipped'] if r['name'] == name]
    assert 'skip' not in record, record
    assert os.path.basename(record['file']) == \
        os.path.basename(checkpoint_url(name))
    shipped = result['checks']['shipped']
    assert shipped['status'] == 'pass' and shipped['loaded'] > 100, shipped
    vs_stock = result['checks']['vs_stock']
    assert vs_stock['status'] == 'pass', format_line(result)
    assert vs_stock['counts'] == {'unreached': 0, 'rng-shift': 0,
                                  'skipped-draws': 0, 'unexplained': 0}
    assert 'forward identical' in vs_stock['detail'], vs_stock
