"""Every program output the guides show is the output of a real run.

An output block in ``docs/`` is a plain fenced block (no language) with the
line ``<!-- output: ID -->`` just before it; ``ID`` names a producer below,
which runs the real code and returns what it prints: the small UPerNet
Swin-T of ``tests/test_upernet_swin_finetune.py`` (its fixtures reused: its
whole-model checkpoint and its 2-iteration fine-tuning), the tiny RetinaNet
configs of ``configs/mmdet/`` trained by a real Runner in the folder of
``tools/make_tiny_data.py``'s data and checkpoint (the fixture of
``tests/test_match_checkpoint.py``), mmext-match's dry run, mmext-merge, and
a download refused at once; for the parameter-efficient methods, the tiny
mmpretrain and mmseg configs (DoRA, SSF, VPT, BitFit, LoRA+, LoRA on MiT's
attention) trained 2 iterations by a real Runner and merged, the PEFT
comparison and the refusals; for OpenMMLab 1.x, mmcls 0.25's own
``tools/train.py`` run in the mmcv 1.x venv (``$MMEXT_MMCV1_VENV``, a
failure naming ``tools/setup_env_mmcv1.sh`` when it is missing). A plain fenced block that is not output (a
diagram, a file tree, a measurement that no test can repeat) carries
``<!-- not-output: why -->``.

How a block is compared with the real output (:func:`mismatch`):

- temporary paths are replaced by the names the docs use (the file's base
  name, ``work/`` for the Runner's work directory);
- Runner log lines lose their ``[YYYY/]MM/DD HH:MM:SS - mmengine - LEVEL - ``
  prefix; a producer marked ``excerpt`` (a log, a long report) matches a
  block that is a contiguous run of its lines, else the block is the whole
  output;
- a doc line ``...`` stands for any number (zero included) of omitted lines;
  a doc line ending in ``...`` after other text stands for a real line that
  starts with that text (the rest of a long line left out);
- a number printed in scientific notation with four significant digits
  (``6.319e-09``: the merge tool's float64 differences, which vary with the
  platform) is compared as ``<small>``, after checking that the real value
  and the documented one are both at most the tool's ``--atol`` 1e-05;
- the operating system's reason of a failed download
  (``<urlopen error [Errno -2] Name or service not known>``) is compared as
  ``<urlopen error ...>``: it depends on the network the run had.
"""
import contextlib
import copy
import glob
import io
import os
import re
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmpretrain.models import ConvNeXt
from mmpretrain.registry import MODELS as PRETRAIN_MODELS
from peft import LoraConfig, inject_adapter_in_model

import mmext_init
from mmext_init import InitConfigError, get_provenance
from mmext_init.inserting import insert_modules
from mmext_init.tools import (check_function_preserving, match_checkpoint,
                              merge_inserted)
from runner_utils import ToyModel, run_runner
from test_design_doc import mmcv1_python
from test_dora import DoRAToyModel  # noqa: F401 (registered on import)
from test_ssf import RESNET as SSF_RESNET
from test_upernet_swin_finetune import (LORA, Records, build, model_text,
                                        root_entry, swin_entry, write_config)
from test_upernet_swin_finetune import finetune, tiny_seg, whole  # noqa: F401
from test_match_checkpoint import tiny_r18_dir  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')) +
              glob.glob(os.path.join(REPO, 'docs', 'guides', '*.md')))
MARKER = re.compile(r'^\s*<!-- (output|not-output): *(.*?) *-->\s*$')
FENCE = re.compile(r'^(\s*)(`{3,}|~{3,})(.*)$')
LOG_PREFIX = re.compile(
    r'^(?:\d{4}/)?\d\d/\d\d \d\d:\d\d:\d\d - mmengine - [A-Z]+ - ')
SMALL = re.compile(r'\b\d\.\d{3}e-\d\d\b')
ATOL = 1e-5
# pages whose plain blocks are not marked yet: design.md's three diagrams
# (a module tree, the build flow, the tensor states), none of them output
URL_ERROR = re.compile(r'<urlopen error [^>]*>')
OS_REASON = '<urlopen error ...>'
CONFIGS = os.path.join(REPO, 'configs', 'mmdet')


def plain_blocks(path: str) -> List[Tuple[int, Optional[Tuple[str, str]],
                                          List[str]]]:
    """The plain fenced blocks of a markdown file.

    Returns:
        ``(line number, (kind, id) of the marker before it or None, lines)``
        per block, its lines dedented by the fence's indentation.
    """
    with open(path) as f:
        lines = f.read().split('\n')
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        j = i + 1
        while j < len(lines) and not re.match(
                r'^\s*' + re.escape(fence) + r'\s*$', lines[j]):
            j += 1
        if not info.strip():
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            mark = MARKER.match(lines[k]) if k >= 0 else None
            body = [x[len(indent):] if x.startswith(indent) else x
                    for x in lines[i + 1:j]]
            found.append((i + 1, mark.groups() if mark else None, body))
        i = j + 1
    return found


def marked_outputs() -> Dict[str, Tuple[str, int, List[str]]]:
    """Every ``output:`` block in docs/: id -> (file, line, lines)."""
    out: Dict[str, Tuple[str, int, List[str]]] = {}
    for path in DOCS:
        for line, mark, body in plain_blocks(path):
            if mark and mark[0] == 'output':
                assert mark[1] not in out, f'output id {mark[1]} twice'
                out[mark[1]] = (os.path.relpath(path, REPO), line, body)
    return out


def small_numbers(lines: List[str], where: str) -> List[str]:
    """``lines`` with each 4-digit scientific number as ``<small>``, each
    checked to be at most :data:`ATOL`."""
    for value in SMALL.findall('\n'.join(lines)):
        assert float(value) <= ATOL, f'{where}: {value} > atol {ATOL}'
    return [SMALL.sub('<small>', line) for line in lines]


def mismatch(doc: List[str], real: List[str],
             excerpt: bool = False) -> Optional[str]:
    """Why the doc block ``doc`` is not the real output ``real`` (None when
    it is), by the rules of this module's docstring."""
    doc = [URL_ERROR.sub(OS_REASON, d) for d in small_numbers(doc, 'doc')]
    real = [URL_ERROR.sub(OS_REASON, r) for r in
            small_numbers([LOG_PREFIX.sub('', r) for r in real], 'run')]
    parts = [r'(?:.*\n)*?' if d.strip() == '...' else
             re.escape(d[:-3]) + r'.*\n' if d.endswith('...') else
             re.escape(d) + r'\n' for d in doc]
    if excerpt:
        parts = [r'(?:.*\n)*?'] + parts + [r'(?:.*\n)*']
    if re.fullmatch(''.join(parts), ''.join(r + '\n' for r in real)):
        return None
    missing = [d for d in doc if d.strip() != '...' and not any(
        r == d or d.endswith('...') and r.startswith(d[:-3]) for r in real)]
    return ('doc lines not in the real output: ' + repr(missing) if missing
            else 'doc lines out of order or with lines left out between')


def clean(text: str, paths: Dict[str, str]) -> List[str]:
    """``text``'s lines, each temporary path in ``paths`` replaced by the
    name the docs use."""
    for path, name in sorted(paths.items(), key=lambda p: -len(p[0])):
        text = text.replace(path, name)
    return text.rstrip('\n').split('\n')


# -- producers: id -> (function of the pytest request, excerpt) -------------
def dry_run_prefix(request) -> List[str]:
    ckpt = request.getfixturevalue('whole')
    folder = os.path.dirname(ckpt)
    config = write_config(folder, 'wrong', model_text(
        init_cfg=root_entry(ckpt, prefix='backbone.')))
    text = match_checkpoint.format_text(match_checkpoint.dry_run(config))
    return clean(text, {folder + os.sep: ''})


def dry_run_swin(request) -> List[str]:
    ckpt = request.getfixturevalue('whole')
    folder = os.path.dirname(ckpt)
    config = write_config(folder, 'swin', swin_entry(ckpt, 'bakbone.'))
    text = match_checkpoint.format_text(match_checkpoint.dry_run(config))
    return clean(text, {folder + os.sep: ''})


def insert_typo(request) -> List[str]:
    folder = str(request.getfixturevalue('tmp_path'))
    typo = dict(LORA, targets=LORA['targets'].replace('proj', 'porj'))
    with pytest.raises(InitConfigError) as info:
        build(write_config(folder, 'typo', model_text(insert=[typo])))
    return [str(info.value)]


def insert_report(request) -> List[str]:
    ckpt = request.getfixturevalue('whole')
    folder = str(request.getfixturevalue('tmp_path'))
    model, _ = build(write_config(folder, 'lora', model_text(
        init_cfg=root_entry(ckpt), insert=[LORA])))
    model.init_weights()
    text = mmext_init.format_report(get_provenance(model))
    return clean(text, {os.path.dirname(ckpt) + os.sep: ''})


def finetune_log(request) -> List[str]:
    _, runner, log = request.getfixturevalue('finetune')
    return clean(log, {runner.work_dir + os.sep: 'work/'})


class Lines(io.StringIO):
    """Printed lines, into the list of the log's records (in order)."""

    def __init__(self, lines: List[str]) -> None:
        super().__init__()
        self.lines = lines

    def write(self, text: str) -> int:
        self.lines.extend('PRINT ' + t for t in text.split('\n') if t)
        return len(text)


def merge(request) -> List[str]:
    config, runner, _ = request.getfixturevalue('finetune')
    folder = str(request.getfixturevalue('tmp_path'))
    out = os.path.join(folder, 'merged.pth')
    with Records() as log, contextlib.redirect_stdout(Lines(log.lines)):
        code = merge_inserted.main([config, os.path.join(
            runner.work_dir, 'iter_2.pth'), '--out', out, '--out-config'])
    assert code == 0
    text = '\n'.join(line.split(' ', 1)[1] for line in log.lines
                     if not line.startswith('DEBUG '))
    return clean(text, {runner.work_dir + os.sep: 'work/',
                        folder + os.sep: '',
                        os.path.dirname(config) + os.sep: ''})


def dry_run_optim(request) -> List[str]:
    request.getfixturevalue('monkeypatch').chdir(
        request.getfixturevalue('tiny_r18_dir'))  # the configs' paths
    res = match_checkpoint.dry_run(
        os.path.join(CONFIGS, 'retinanet_r18_full_ft_decay_tiny.py'),
        optim=True)
    return clean(match_checkpoint.format_text(res), {})


def runner_log(config: str, iters: int) -> Callable:
    """A producer: the log of a real Runner training ``config`` (of
    configs/mmdet/, run in the tiny data's folder, as the README says)
    ``iters`` iterations, no checkpoint saved."""
    def produce(request) -> List[str]:
        request.getfixturevalue('monkeypatch').chdir(
            request.getfixturevalue('tiny_r18_dir'))
        cfg = Config.fromfile(os.path.join(CONFIGS, config + '.py'))
        cfg.work_dir = str(request.getfixturevalue('tmp_path'))
        cfg.experiment_name = f'docs_{config}'  # its own logger
        cfg.train_cfg.max_iters = iters
        cfg.default_hooks.checkpoint = None
        runner = Runner.from_cfg(cfg)
        runner.train()
        with open(os.path.join(runner.log_dir,
                               f'{runner.timestamp}.log')) as f:
            return clean(f.read(), {})
    return produce


OFFLINE = """
import mmext_init
from mmdet.models.backbones import ResNet
model = ResNet(depth=50, init_cfg=dict(type='Pretrained',
                                       checkpoint='torchvision://resnet50'))
try:
    model.init_weights()
except Exception as error:
    print('== the error ==')
    print(error)
"""


def offline_download(request) -> List[str]:
    """The download error, in a fresh process whose proxy is a closed port
    (refused at once: nothing is downloaded, online or not) and whose
    ``TORCH_HOME`` is empty."""
    home = str(request.getfixturevalue('tmp_path') / 'th')
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ('no_proxy', 'http_proxy', 'https_proxy')}
    env.update(TORCH_HOME=home, https_proxy='http://127.0.0.1:9',
               http_proxy='http://127.0.0.1:9')
    proc = subprocess.run([sys.executable, '-c', OFFLINE], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return clean(proc.stdout.split('== the error ==\n')[1],
                 {home: '/tmp/th_demo'})


# -- the parameter-efficient methods' outputs ---------------------------
TINY_CHECKPOINTS = ('vit_stock_tiny.pth', 'segformer_mit_stock_tiny.pth')


@pytest.fixture(scope='session')
def tiny_peft_dir(tmp_path_factory) -> str:
    """The tiny classification and segmentation sets and the stock ViT and
    SegFormer checkpoints (tools/make_tiny_data.py), in the e2e tests'
    ``<basetemp>/tiny``: what is there is reused."""
    path = tmp_path_factory.getbasetemp() / 'tiny'
    path.mkdir(exist_ok=True)
    script = os.path.join(REPO, 'tools', 'make_tiny_data.py')
    ckpts = [a for c in TINY_CHECKPOINTS for a in ('--checkpoint', c)]
    for only in (['cls'], ['seg'], ['ckpt', *ckpts]):
        subprocess.run([sys.executable, script, '--out-dir', str(path),
                        '--only', *only], check=True, capture_output=True)
    return str(path)


TRAINED: Dict[str, Tuple[str, str]] = {}  # config -> (work dir, log)


def trained(request, config: str) -> Tuple[str, str]:
    """``configs/<config>.py`` trained 2 iterations by a real Runner in the
    tiny data's folder, ``iter_2.pth`` saved (once per session): its work
    dir and its log, paths as the docs write them."""
    request.getfixturevalue('monkeypatch').chdir(
        request.getfixturevalue('tiny_peft_dir'))
    if config not in TRAINED:
        work_dir = str(request.getfixturevalue('tmp_path_factory').mktemp(
            'work'))
        cfg = Config.fromfile(os.path.join(REPO, 'configs', config + '.py'))
        cfg.work_dir = work_dir
        cfg.experiment_name = f"docs_{config.replace('/', '_')}"
        cfg.train_cfg.max_iters = 2
        cfg.default_hooks.checkpoint.interval = 2
        runner = Runner.from_cfg(cfg)
        runner.train()
        with open(os.path.join(runner.log_dir,
                               f'{runner.timestamp}.log')) as f:
            TRAINED[config] = work_dir, f.read()
    return TRAINED[config]


def train_log(config: str) -> Callable:
    """A producer: the log of :func:`trained` ``config``."""
    def produce(request) -> List[str]:
        return clean(trained(request, config)[1], {})
    return produce


def merge_trained_run(config: str, *options: str) -> Callable:
    """A producer: ``mmext-merge configs/<config>.py work/iter_2.pth --out
    merged.pth OPTIONS`` on the run of :func:`trained` (logs and prints)."""
    def produce(request) -> List[str]:
        work_dir, _ = trained(request, config)
        folder = str(request.getfixturevalue('tmp_path'))
        path = os.path.join(REPO, 'configs', config + '.py')
        with Records() as log, contextlib.redirect_stdout(Lines(log.lines)):
            code = merge_inserted.main([
                path, os.path.join(work_dir, 'iter_2.pth'), '--out',
                os.path.join(folder, 'merged.pth'), *options])
        assert code == 0
        text = '\n'.join(line.split(' ', 1)[1] for line in log.lines
                         if not line.startswith('DEBUG '))
        return clean(text, {work_dir + os.sep: 'work/', folder + os.sep: '',
                            REPO + os.sep: ''})
    return produce


def lora_mha_peft(request) -> List[str]:
    """The README snippet: PEFT's LoRA on a 16-wide attention, its trained
    A and B loaded into ours; the LoRA names and the largest difference."""
    torch.manual_seed(0)
    plain = nn.Sequential()
    plain.add_module('attn', nn.MultiheadAttention(16, 2))
    ours, theirs = copy.deepcopy(plain), copy.deepcopy(plain)
    insert_modules(ours, [dict(type='LoRA', targets='attn', rank=4,
                               alpha=8)])
    inject_adapter_in_model(LoraConfig(target_modules='attn', r=4,
                                       lora_alpha=8), theirs)
    with torch.no_grad():  # "trained": B no longer zero
        for name, value in theirs.named_parameters():
            if 'lora_' in name:
                value.normal_()
    ours.load_state_dict({k.replace('.base_layer', '').replace(
        '.default', ''): v for k, v in theirs.state_dict().items()},
        strict=True)
    x = torch.randn(5, 2, 16)
    with torch.no_grad():
        a, b = (m.eval().attn(x, x, x)[0] for m in (ours, theirs))
    assert not torch.allclose(a, plain.eval().attn(x, x, x)[0])
    names = sorted(n for n in ours.state_dict() if 'lora_' in n)
    return [repr(names), f'max difference: {(a - b).abs().max().item()}']


def lora_grouped_rank(request) -> List[str]:
    model = ConvNeXt(arch=dict(depths=[1, 1], channels=[8, 16]))
    with pytest.raises(InitConfigError) as info:
        insert_modules(model, [dict(type='LoRA', targets=r'.*depthwise_conv',
                                    rank=8)])
    return [str(info.value)]


def vpt_refused(request) -> List[str]:
    init_default_scope('mmpretrain')
    arch = dict(embed_dims=32, num_layers=4, num_heads=2,
                feedforward_channels=64)
    with pytest.raises(InitConfigError) as info:
        PRETRAIN_MODELS.build(dict(
            type='ImageClassifier', backbone=dict(
                type='BEiTViT', arch=arch, img_size=32, patch_size=8),
            insert=[dict(type='VPT', targets='backbone', num_tokens=3)]))
    return [str(info.value)]


def dora_load_from(request) -> List[str]:
    folder = str(request.getfixturevalue('tmp_path'))
    base = os.path.join(folder, 'base.pth')
    torch.save({'state_dict': ToyModel().state_dict()}, base)
    model = dict(type='DoRAToyModel', insert=[
        dict(type='DoRA', targets=r'backbone\.fc1', rank=2)])
    with pytest.raises(InitConfigError) as info:
        run_runner(os.path.join(folder, 'work'), model, iters=1,
                   load_from=base)
    return clean(str(info.value), {folder + os.sep: ''})


def ssf_no_bias(request) -> List[str]:
    folder = str(request.getfixturevalue('tmp_path'))
    config = os.path.join(folder, 'conv.py')
    with open(config, 'w') as f:
        f.write(SSF_RESNET.format(targets=r'backbone\.conv1'))
    model, _ = check_function_preserving.build_initialized(
        Config.fromfile(config))
    ckpt = os.path.join(folder, 'conv.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = merge_inserted.main([config, ckpt, '--out', os.path.join(
            folder, 'merged.pth'), '--input-shape', '1', '3', '32', '32'])
    assert code == 2
    return clean(err.getvalue(), {folder + os.sep: ''})


VIT_INPUT = ('--module', 'tensor', '--input-shape', '2', '3', '32', '32')
MMCV1_TRAIN = """
import os, subprocess, sys
import cv2
import numpy as np
import torch
from mmcls.models import ResNet
rng = np.random.default_rng(0)
for split, count in (('train', 8), ('val', 4)):
    for name, level in (('dark', 40), ('light', 200)):
        folder = os.path.join('data', 'tiny_cls', split, name)
        os.makedirs(folder)
        for i in range(count):
            noise = rng.normal(0, 20, (32, 32, 3))
            cv2.imwrite(os.path.join(folder, f'{i}.png'),
                        np.clip(level + noise, 0, 255).astype(np.uint8))
torch.manual_seed(0)
os.makedirs('checkpoints')
state = ResNet(depth=18).state_dict()
torch.save({'state_dict': {f'backbone.{k}': v for k, v in state.items()},
            'meta': {}}, os.path.join('checkpoints', 'resnet18_tiny_cls.pth'))
sys.exit(subprocess.run([sys.executable, sys.argv[1], sys.argv[2],
                         '--work-dir', 'work', '--cfg-options',
                         'runner.max_epochs=1']).returncode)
"""
MMCV1_LOG_PREFIX = re.compile(
    r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - \w+ - [A-Z]+ - ', re.M)


def mmcv1_train_log(request) -> List[str]:
    """mmcls 0.25's own tools/train.py (through tests/mmcv1/launch_train.py)
    on configs/mmcls/resnet18_adapter_freeze_tiny.py for one epoch, in the
    mmcv 1.x venv, on generated images and a generated checkpoint: its log
    file up to its ``Start running`` line (the reports come before it; the
    iteration lines after it print the lr in scientific notation, which
    :func:`mismatch` would take for a merge difference), log prefixes
    removed."""
    folder = str(request.getfixturevalue('tmp_path'))
    proc = subprocess.run(
        [mmcv1_python(), '-c', MMCV1_TRAIN,
         os.path.join(REPO, 'tests', 'mmcv1', 'launch_train.py'),
         os.path.join(REPO, 'configs', 'mmcls',
                      'resnet18_adapter_freeze_tiny.py')],
        cwd=folder, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (log, ) = glob.glob(os.path.join(folder, 'work', '*.log'))
    with open(log) as f:
        text = MMCV1_LOG_PREFIX.sub('', f.read())
    assert '\nStart running' in text, text[-3000:]
    return clean(text.split('\nStart running')[0], {})


PRODUCERS: Dict[str, Tuple[Callable, bool]] = {
    'offline-download': (offline_download, False),
    'dry-run-optim-decay': (dry_run_optim, True),
    'freeze-log': (runner_log('retinanet_r18_adapters_freeze_tiny', 1), True),
    'load-from-log': (runner_log('retinanet_r18_load_from_tiny', 1), True),
    'unfreeze-log': (runner_log('retinanet_r18_adapters_unfreeze_tiny', 3),
                     True),
    'dry-run-wrong-prefix': (dry_run_prefix, False),
    'dry-run-swin-own-loader': (dry_run_swin, True),
    'insert-targets-typo': (insert_typo, False),
    'insert-report-line': (insert_report, True),
    'finetune-log': (finetune_log, True),
    'merge-upernet': (merge, False),
    'lora-mha-log': (train_log('mmseg/segformer_mit_lora_attn_tiny'), True),
    'lora-mha-merge': (merge_trained_run('mmseg/segformer_mit_lora_attn_tiny'),
                       False),
    'lora-mha-peft': (lora_mha_peft, False),
    'lora-grouped-rank': (lora_grouped_rank, False),
    'dora-log': (train_log('mmpretrain/vit_dora_tiny'), True),
    'dora-merge': (merge_trained_run('mmpretrain/vit_dora_tiny', *VIT_INPUT),
                   True),
    'dora-load-from': (dora_load_from, False),
    'ssf-log': (train_log('mmpretrain/vit_ssf_tiny'), True),
    'ssf-merge': (merge_trained_run('mmpretrain/vit_ssf_tiny', *VIT_INPUT),
                  True),
    'ssf-no-bias': (ssf_no_bias, True),
    'vpt-report': (train_log('mmpretrain/vit_vpt_tiny'), True),
    'vpt-refused': (vpt_refused, False),
    'bitfit-log': (train_log('mmpretrain/vit_bitfit_tiny'), True),
    'lora-plus-log': (train_log('mmpretrain/vit_lora_plus_tiny'), True),
    'mmcls-train': (mmcv1_train_log, True),
}


@pytest.mark.parametrize('name', sorted(PRODUCERS))
def test_doc_output_is_the_real_output(name, request):
    """Each producer's id marks at least one block, and every block it marks
    is its real output."""
    MMLogger.get_current_instance()
    blocks = {k: v for k, v in marked_outputs().items()
              if k == name or k.startswith(name + ':')}
    assert blocks, f'no <!-- output: {name} --> block in docs/'
    produce, excerpt = PRODUCERS[name]
    real = produce(request)
    for key, (path, line, body) in blocks.items():
        why = mismatch(body, real, excerpt)
        assert why is None, f'{path}:{line} ({key}): {why}\n' + '\n'.join(
            real)


def test_every_marked_output_has_a_producer():
    unknown = [f'{path}:{line} {key}' for key, (path, line, _) in
               marked_outputs().items() if key.split(':')[0] not in PRODUCERS]
    assert unknown == []


def test_the_comparison_fails_on_an_edited_block():
    """An edit the code does not print fails: a changed word, a line left
    out without ``...``, lines reordered, a number above the atol."""
    real = ['load x: 3 loaded', '  a <- b', '  c <- d',
            'merge proven: max 6.319e-09 (atol 1e-05)']
    assert mismatch(list(real), real) is None
    assert mismatch(['load x: 3 loaded', '...',
                     'merge proven: max 1.000e-08 (atol 1e-05)'], real) is None
    assert mismatch(['  a <- b'], real, excerpt=True) is None
    assert mismatch(['  a <- ...', '  c <- d'], real, excerpt=True) is None
    assert mismatch(['  a <- c...'], real, excerpt=True) is not None
    assert mismatch(['load x: 4 loaded'] + real[1:], real) is not None
    assert mismatch([real[0], real[2], real[3]], real) is not None
    assert mismatch([real[0], real[2], real[1], real[3]], real) is not None
    assert mismatch(['  a <- b'], real) is not None  # not the whole output
    with pytest.raises(AssertionError, match='atol'):
        mismatch(real[:3] + ['merge proven: max 2.000e-04 (atol 1e-05)'],
                 real)


def test_every_plain_block_is_marked():
    """Every plain fenced block of the pages says whether it is output
    (then checked above) or not, so that no output shown goes unchecked."""
    unmarked = [f'{os.path.relpath(path, REPO)}:{line}'
                for path in DOCS
                for line, mark, _ in plain_blocks(path)
                if mark is None or not mark[1]]  # an id, or why not output
    assert unmarked == []
