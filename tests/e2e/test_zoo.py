"""The zoo subset: fixed configs shipped with mmdet, mmseg and mmpretrain,
and timm models of the sweep's timm sample, built as shipped (their
checkpoint names given generated files in a temporary ``TORCH_HOME``), run
through tools/zoo_sweep.py (stock and plugin in fresh processes); every one
must PASS (a SKIP fails here: these configs build).
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

from mmext_init.tools.zoo.report import format_line
from mmext_init.tools.zoo.urls import checkpoint_url

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TOOLS = os.path.join(REPO, 'tools')

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
    # self-supervised: a momentum encoder stock never reaches (below a
    # plain container), explained by the ledger's beyond_stock
    'mmpretrain:mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py',
    # CAE: its neck re-initializes decoders stock never reaches, after the
    # plugin ran their declared init (the random stream shifts)
    'mmpretrain:cae/cae_beit-base-p16_8xb256-amp-coslr-300e_in1k.py',
    # timm through mmpretrain's TIMMBackbone, backbone-level Pretrained
    'timm:resnet18/timm_resnet18.py',
]
BEYOND_STOCK = {  # config -> modules the ledger says stock never reaches
    'mmpretrain:mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py':
        ['encoder_k.module.0'],
    'mmpretrain:cae/cae_beit-base-p16_8xb256-amp-coslr-300e_in1k.py':
        [f'neck.decoders.{i}' for i in range(4)],
}
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
    'mmpretrain:vision_transformer/vit-base-p16_4xb544-ipu_in1k.py':
        'https://download.openmmlab.com/mmclassification/v0/vit/pretrain/'
        'vit-base-p16_3rdparty_pt-64xb64_in1k-224_20210928-02284250.pth',
    'timm:resnet18/timm_resnet18.py':
        'https://timm.invalid/zoo-sweep/resnet18.pth',
}
SUBSET += [c for c in URL_CASES if c not in SUBSET]
SWEEP_TIMEOUT = 1800


@pytest.fixture(scope='module')
def sweep(request, tmp_path_factory) -> Tuple[Dict[str, dict], str]:
    """Sweep the configs of the selected tests; ``({name: result}, log)``."""
    selected = sorted({item.callspec.params['config']
                       for item in request.session.items
                       if getattr(item, 'originalname', '') in (
                           'test_zoo_config', 'test_zoo_url_checkpoint',
                           'test_zoo_beyond_stock')})
    only = '|'.join(f'^{re.escape(c)}$' for c in selected)
    out = tmp_path_factory.mktemp('zoo') / 'zoo.json'
    proc = subprocess.run(
        [sys.executable, os.path.join(TOOLS, 'zoo_sweep.py'), '--only', only,
         '--packages', 'mmdet', 'mmseg', 'mmpretrain', 'timm', '-j', '2',
         '--json', str(out)], capture_output=True, text=True,
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
    assert shipped['status'] == 'pass' and shipped['loaded'] >= 100, shipped
    vs_stock = result['checks']['vs_stock']
    assert vs_stock['status'] == 'pass', format_line(result)
    assert vs_stock['counts'] == {'unreached': 0, 'rng-shift': 0,
                                  'skipped-draws': 0, 'unexplained': 0}
    assert 'forward identical' in vs_stock['detail'], vs_stock


@pytest.mark.parametrize('config', sorted(BEYOND_STOCK))
def test_zoo_beyond_stock(sweep, config):
    """The differences from stock are exactly those the ledger's
    ``beyond_stock`` explains: the modules stock never reaches."""
    results, log = sweep
    assert config in results, f'{config} was not swept:\n{log[-2000:]}'
    vs_stock = results[config]['checks']['vs_stock']
    assert vs_stock['status'] == 'pass', format_line(results[config])
    beyond = BEYOND_STOCK[config]
    assert vs_stock['beyond_stock'] == beyond
    assert all(any(m == b or m.startswith(b + '.') for b in beyond)
               for m in vs_stock['unreached_modules']), vs_stock
    counts = vs_stock['counts']
    assert counts['unreached'] + counts['rng-shift'] > 0, vs_stock
    assert counts['unexplained'] == 0
