"""A new user's fine-tuning of mmseg's UPerNet Swin-T to 5 classes, from
the documentation alone: the wrong and the missing ``prefix``, Swin reading the
checkpoint itself, ``freeze='loaded'`` with ``Classes`` adding a class, a
``targets`` typo, and the dry run on all of them.

The model is mmseg's own config as shipped
(``swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512``),
shrunk as ``--cfg-options`` would shrink it (one block per stage, 32
channels, 64 px, BN for SyncBN on one CPU process; none of the behaviours
here depends on the size), its backbone's URL ``init_cfg`` replaced by the
user's entries. The "pretrained" whole-model checkpoint (4 classes) is
written from a stock build, in a temporary directory.
"""
import logging
import os
import subprocess
import sys
from typing import Dict, List

import mmseg
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import MODELS, init_default_scope

import mmext_init
from mmext_init import CheckpointError, InitConfigError, get_provenance

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
from mmext_init.tools import match_checkpoint, merge_inserted

MMLogger.get_current_instance()  # before any capsys test (see others)

SWIN_UPERNET = os.path.join(
    os.path.dirname(mmseg.__file__), '.mim', 'configs', 'swin',
    'swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py')
BN = dict(type='BN', requires_grad=True)
# the --cfg-options of the small model, as a config (the dry run reads one)
SMALL = '''_base_ = {base!r}
custom_imports = dict(imports=['mmext_init'], allow_failed_imports=False)
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                  init_cfg=None),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=32,
                     num_classes={classes}, norm_cfg={bn!r}),
    auxiliary_head=dict(in_channels=128, channels=16,
                        num_classes={classes}, norm_cfg={bn!r}))
'''
CLASSES = dict(type='Classes', keys=r'.*conv_seg\.(weight|bias)',
               index_map=[0, 1, 2, 3, -1])  # the 5th class is new
LORA = dict(type='LoRA', rank=4, alpha=8,
            targets=r'backbone\.stages\.\d+\.blocks\.\d+\.attn\.w_msa\.'
            r'(qkv|proj)')


def write_config(folder, name: str, text: str = '', classes: int = 5) -> str:
    """``folder/name.py``: ``text`` over the small UPerNet Swin-T."""
    base = os.path.join(str(folder), f'small_{classes}.py')
    with open(base, 'w') as f:
        f.write(SMALL.format(base=SWIN_UPERNET, classes=classes, bn=BN))
    path = os.path.join(str(folder), f'{name}.py')
    with open(path, 'w') as f:
        f.write(f'_base_ = {base!r}\n' + text)
    return path


def model_text(**fields) -> str:
    """``model = dict(...)`` of a config (merged over its base's)."""
    return 'model = dict(' + ', '.join(f'{k}={v!r}'
                                       for k, v in fields.items()) + ')\n'


def docs_block(marker: str) -> str:
    """The fenced Python block holding ``marker`` in the loading guide
    (docs/guides/loading.md, "Dry run"), where users read it."""
    with open(os.path.join(REPO, 'docs', 'guides', 'loading.md')) as f:
        blocks = f.read().split('```python\n')[1:]
    found = [b.split('```')[0] for b in blocks if marker in b]
    assert len(found) == 1, f'{len(found)} python blocks hold {marker!r}'
    return found[0]


@pytest.fixture(scope='module')
def whole(tmp_path_factory) -> str:
    """A whole-model checkpoint (4 classes), made as the loading guide says a
    user makes one: its code run as it stands, on the 4-class config."""
    folder = tmp_path_factory.mktemp('upernet_swin')
    config = write_config(folder, 'stock', classes=4)
    path = str(folder / 'upernet_swin_4cls.pth')
    code = docs_block('my_whole_model.pth')
    exec(code.replace("'my_config.py'", repr(config)).replace(
        "'my_whole_model.pth'", repr(path)), {})
    state = torch.load(path, weights_only=True)['state_dict']
    assert state['decode_head.conv_seg.weight'].shape[0] == 4
    return path


def build(config: str):
    cfg = Config.fromfile(config)
    init_default_scope('mmseg')
    return MODELS.build(cfg.model), cfg


class Records(logging.Handler):
    """The messages MMEngine's current logger emits while attached."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f'{record.levelname} {record.getMessage()}')

    def __enter__(self) -> 'Records':
        MMLogger.get_current_instance().addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        MMLogger.get_current_instance().removeHandler(self)


def root_entry(whole: str, **options) -> Dict:
    return dict(type='Pretrained', checkpoint=whole, adapt=[CLASSES],
                **options)


# -- prefix hints ------------------------------------------------------
@pytest.mark.parametrize('prefix', ['backbone.', 'model.'])
def test_wrong_prefix_suggests_no_prefix_first(whole, tmp_path, prefix):
    """A ``prefix`` on the whole-model entry: the error and the dry run put
    'no prefix' first (it loads everything but the new class rows), ranked
    by what each suggestion loads; both prefixes exit the dry run alike."""
    config = write_config(tmp_path, 'wrong', model_text(
        init_cfg=root_entry(whole, prefix=prefix)))
    model, _ = build(config)
    with pytest.raises(CheckpointError) as info:
        model.init_weights()
    text = str(info.value)
    assert f"matches the module with prefix={prefix!r}" in text
    assert 'Try: no prefix would load 100%' in text, text
    res = match_checkpoint.dry_run(config)
    fractions = [s['loaded_fraction'] for s in res['suggestions']]
    assert res['suggestions'][0]['setting'] == 'no prefix'
    assert fractions == sorted(fractions, reverse=True)
    assert fractions[0] > 0.99 and res['loaded_fraction'] == 0.0
    assert match_checkpoint.main([config]) == 1


def test_no_prefix_loads_and_the_new_class_row_keeps_its_init(whole,
                                                              tmp_path):
    config = write_config(tmp_path, 'right',
                          model_text(init_cfg=root_entry(whole)))
    model, _ = build(config)
    model.init_weights()
    state = torch.load(whole)['state_dict']
    weight = model.decode_head.conv_seg.weight
    assert torch.equal(weight[:4], state['decode_head.conv_seg.weight'])
    assert not torch.equal(weight[4], state['decode_head.conv_seg.weight'][0])
    entry = get_provenance(model).entries['decode_head.conv_seg.weight']
    assert entry.kind == 'checkpoint' and any(
        n.startswith('rest: ') for n in entry.notes)
    assert match_checkpoint.main([config]) == 0


# -- Swin reads the checkpoint itself -------------------------------------
def swin_entry(whole: str, prefix: str) -> str:
    return model_text(backbone=dict(init_cfg=dict(
        _delete_=True, type='Pretrained', checkpoint=whole, prefix=prefix)))


def test_swin_dry_run_predicts_its_own_loader(whole, tmp_path):
    """SwinTransformer.init_weights ignores ``prefix`` and strips
    ``backbone.``: the dry run predicts what the run loads (not 0%), and
    both say that the misspelt prefix is not applied; the ledger's record
    carries no prefix."""
    config = write_config(tmp_path, 'swin', swin_entry(whole, 'bakbone.'))
    res = match_checkpoint.dry_run(config)
    assert res['module'] == 'backbone'
    assert res['own_loader'] == 'SwinTransformer.init_weights'
    assert res['loaded_fraction'] == 1.0
    ignored = ("SwinTransformer.init_weights reads "
               f"{whole} itself, with its own key handling, and ignores "
               "`prefix` (prefix='bakbone.' is not applied)")
    assert any(ignored in w for w in res['warnings'])
    assert res['suggestions'] == []
    model, _ = build(config)
    with Records() as log:
        model.init_weights()
    assert any(line.startswith('WARNING ') and ignored in line
               for line in log.lines), log.lines
    record = next(r for r in get_provenance(model).loads
                  if r.module == 'backbone')
    assert record.via == 'SwinTransformer.init_weights'
    assert record.prefix is None
    assert record.loaded_fraction == res['loaded_fraction']
    assert sorted(record.loaded) == sorted(
        f'backbone.{n}' for n in res['loaded'])
    assert not any("[prefix='bakbone.']" in line for line in log.lines)


def test_swin_builds_on_meta_without_a_message(whole, tmp_path):
    """Swin's constructor reads its drop-path rates back with ``.item()``:
    the dry run builds it with only parameters and buffers on meta."""
    config = write_config(tmp_path, 'swin_ok', swin_entry(whole, ''))
    res = match_checkpoint.dry_run(config)
    assert (res['built_on'], res['built_on_reason']) == ('meta', None)
    assert 'meta failed' not in match_checkpoint.format_text(res)
    assert res['warnings'] == []


def test_swin_options_it_cannot_apply_stop_the_dry_run_as_the_run(
        whole, tmp_path, capsys):
    """Key options other than ``prefix`` (here ``revise_keys``) that Swin's
    own loader would ignore stop the run with an error; the dry run stops
    with the same one (exit 2), instead of predicting a load."""
    config = write_config(tmp_path, 'swin_revise', model_text(
        backbone=dict(init_cfg=dict(
            _delete_=True, type='Pretrained', checkpoint=whole,
            revise_keys=[(r'^backbone\.', '')]))))
    model, _ = build(config)
    with pytest.raises(InitConfigError) as info:
        model.init_weights()
    assert 'SwinTransformer.init_weights loads ' in str(info.value)
    assert 'itself and ignores revise_keys' in str(info.value)
    assert match_checkpoint.main([config]) == 2
    assert capsys.readouterr().err == f'mmext-match: error: {info.value}\n'


def test_swin_ignored_prefix_on_a_backbone_checkpoint(whole, tmp_path):
    """A backbone-only file and a misspelt ``prefix``: Swin loads it whole
    (the prefix ignored), and so do the dry run and the optimizer
    constructor's prediction, which ``freeze='loaded'`` selects from."""
    state = torch.load(whole, weights_only=True)['state_dict']
    alone = str(tmp_path / 'swin_alone.pth')
    torch.save({'state_dict': {k[len('backbone.'):]: v for k, v in
                               state.items() if k.startswith('backbone.')}},
               alone)
    config = write_config(tmp_path, 'swin_alone', swin_entry(
        alone, 'bakbone.') + TRAIN.format(data='unused'))
    model, _ = build(config)
    model.init_weights()
    record = next(r for r in get_provenance(model).loads
                  if r.module == 'backbone')
    assert record.loaded_fraction == 1.0
    res = match_checkpoint.dry_run(config)
    assert res['loaded_fraction'] == 1.0
    trainable = match_checkpoint.dry_run(config, optim=True)['trainable']
    frozen = set(trainable['frozen'])
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith('backbone.')}


# -- freeze='loaded' and a partly new tensor --------------------------------
TRAIN = '''
crop_size = (64, 64)
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.01, momentum=0.9),
                     constructor='ProvenanceOptimWrapperConstructor',
                     paramwise_cfg=dict(freeze='loaded'))
data_root = {data!r}
metainfo = dict(classes=('background', 'red', 'green', 'blue', 'yellow'))
pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
            dict(type='Resize', scale=crop_size, keep_ratio=False),
            dict(type='PackSegInputs')]
seg_set = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
               img_suffix='.png', seg_map_suffix='.png', pipeline=pipeline)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, data_prefix=dict(
        img_path='img_dir/train', seg_map_path='ann_dir/train'), **seg_set))
test_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, data_prefix=dict(
        img_path='img_dir/val', seg_map_path='ann_dir/val'), **seg_set))
val_dataloader = None
val_evaluator = None
val_cfg = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=20)
param_scheduler = []
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', interval=2,
                                     by_epoch=False))
custom_hooks = [dict(type='UnfreezeHook', milestones=[
    dict(at=10, by='iter', select='loaded', lr_mult=0.1)])]
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
'''


@pytest.fixture(scope='module')
def tiny_seg(tmp_path_factory) -> str:
    """tools/make_tiny_data.py's segmentation set with 5 labels."""
    out = tmp_path_factory.mktemp('seg5')
    subprocess.run([sys.executable, os.path.join(REPO, 'tools',
                                                 'make_tiny_data.py'),
                    '--out-dir', str(out), '--only', 'seg', '--classes', '5'],
                   check=True, capture_output=True)
    return str(out / 'data' / 'tiny_seg')


PARTLY = {'decode_head.conv_seg.weight', 'decode_head.conv_seg.bias',
          'auxiliary_head.conv_seg.weight', 'auxiliary_head.conv_seg.bias'}
REPORTED = ("partly new (the checkpoint provides part, the rest is new: "
            "'new' to selectors, not 'loaded', so freeze='loaded' leaves "
            'them to train): {decode_head,auxiliary_head}.conv_seg.'
            '{weight,bias} <- Classes(')


def run_training(config: str, work_dir: str, **options):
    """mmengine's Runner on ``config`` (``options`` merged as
    ``--cfg-options``): the runner and its log."""
    from mmengine.runner import Runner  # after the configs' custom_imports
    cfg = Config.fromfile(config)
    cfg.work_dir = work_dir
    cfg.merge_from_dict(options)
    runner = Runner.from_cfg(cfg)
    runner.train()
    with open(os.path.join(runner.log_dir, f'{runner.timestamp}.log')) as f:
        return runner, f.read()


@pytest.fixture(scope='module')
def finetune(whole, tiny_seg, tmp_path_factory):
    """The fine-tuning to 5 classes, LoRA from the config,
    ``freeze='loaded'``, an UnfreezeHook milestone at iter 10, run as the
    usual smoke test (``train_cfg.max_iters=2``)."""
    folder = tmp_path_factory.mktemp('finetune')
    config = write_config(folder, 'finetune', model_text(
        init_cfg=root_entry(whole), insert=[LORA]) +
        TRAIN.format(data=tiny_seg))
    runner, log = run_training(config, str(folder / 'work'),
                               **{'train_cfg.max_iters': 2})
    return config, runner, log


def test_freeze_loaded_trains_the_partly_new_head(whole, finetune):
    """Everything but the class rows ``Classes`` adds comes from the
    checkpoint: ``freeze='loaded'`` used to freeze every tensor. The
    conv_seg tensors of both heads are partly new: they train (with
    LoRA), and the dry run and the Runner's report say why; the
    UnfreezeHook milestone past the smoke test's end is a warning."""
    config, runner, log = finetune
    res = match_checkpoint.dry_run(config, optim=True)
    trainable = res['trainable']
    assert {p['name'] for p in trainable['partly_new']} == PARTLY
    assert all(p['trainable'] for p in trainable['partly_new'])
    lora = {n for g in trainable['groups'] for n in g['names']
            if '.lora_' in n}
    assert len(lora) == 16  # A and B of qkv and proj in 4 blocks
    assert sorted(n for g in trainable['groups'] for n in g['names']) == \
        sorted(PARTLY | lora)
    assert REPORTED in match_checkpoint.format_text(res)
    assert ("UnfreezeHook milestone (at=10, by='iter') is never reached: "
            "training stops at iter 2, so select='loaded' stays frozen for "
            'the whole run') in log
    assert REPORTED in log
    state = torch.load(whole, weights_only=True)['state_dict']
    model = runner.model
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == PARTLY | lora
    now = model.state_dict()
    for name in PARTLY:  # trained, the checkpoint's rows included
        assert not torch.equal(now[name][:4], state[name]), name
    assert any(now[n].any() for n in lora if '.lora_B.' in n)  # from 0
    assert torch.equal(now['backbone.norm0.weight'],
                       state['backbone.norm0.weight'])


def test_resume_keeps_the_partly_new_head_training(finetune, tmp_path):
    """A resume restores the heads whole (5 classes in the file): the
    ledger the file holds says they were partly new, so the resumed run
    trains what the first one trained, and its optimizer state loads."""
    config, first, _ = finetune
    runner, log = run_training(config, first.work_dir, resume=True, **{
        'train_cfg.max_iters': 4})
    assert runner.iter == 4 and 'Iter(train) [4/4]' in log
    assert REPORTED in log
    trained = {n for n, p in runner.model.named_parameters()
               if p.requires_grad}
    assert PARTLY <= trained and len(trained) == 20


def test_exclude_selector_on_the_whole_model(whole, tmp_path):
    """``exclude=...`` in ``freeze``: everything but the class layers and
    the LoRA tensors is frozen, the prediction the dry run reports."""
    config = write_config(tmp_path, 'exclude', model_text(
        init_cfg=root_entry(whole), insert=[LORA]) + TRAIN.format(
            data='unused').replace("freeze='loaded'", r"freeze=dict(exclude="
                                   r"dict(name=r'.*(conv_seg|\.lora_[AB])\..*'))"))
    trainable = match_checkpoint.dry_run(config, optim=True)['trainable']
    names = {n for g in trainable['groups'] for n in g['names']}
    assert PARTLY <= names and len(names) == 20
    assert all('conv_seg' in n or '.lora_' in n for n in names)


# -- insert targets ---------------------------------------------------------
def test_targets_alternative_matching_nothing_is_an_error(tmp_path):
    typo = dict(LORA, targets=LORA['targets'].replace('proj', 'porj'))
    config = write_config(tmp_path, 'typo', model_text(insert=[typo]))
    with pytest.raises(InitConfigError) as info:
        build(config)
    text = str(info.value)
    assert "the alternative 'porj' of targets matches no module path" in text
    closest = text.split('; closest module paths: ')[1].split(' or ')
    assert closest and all(p.endswith(".attn.w_msa.proj'") for p in closest)
    model, _ = build(write_config(tmp_path, 'fine',
                                  model_text(insert=[LORA])))
    names = [n for n, _ in model.named_parameters() if '.lora_A.' in n]
    assert len(names) == 8  # qkv and proj of the 4 blocks


# -- the merge tool -----------------------------------------------------------
def test_merge_proves_the_whole_model_and_writes_its_config(whole, finetune,
                                                           tmp_path, capsys):
    """The Runner checkpoint of the fine-tuning (LoRA trained, heads
    trained): the proof runs through the whole model (``mode='tensor'``),
    the merged model's report names the merged file, and ``--out-config``
    is a plain config that mmseg's own tools/test.py runs with the merged
    file, the plugin never imported."""
    config, runner, _ = finetune
    trained = os.path.join(runner.work_dir, 'iter_2.pth')
    out = str(tmp_path / 'merged.pth')
    with Records() as log:
        assert merge_inserted.main([config, trained, '--out', out,
                                    '--out-config']) == 0
    text = capsys.readouterr().out
    assert "through the whole model (mode='tensor'), float64" in text
    assert 'wrote ' + str(tmp_path / 'merged.py') in text
    reports = '\n'.join(log.lines)
    assert f'<- {out} via Pretrained' in reports  # the merged model's
    assert whole not in reports  # each model's tensors from the file loaded
    plain_config = str(tmp_path / 'merged.py')
    plain = Config.fromfile(plain_config, import_custom_modules=False)
    assert 'insert' not in plain.model and 'custom_imports' not in plain
    assert [h['type'] for h in plain.get('custom_hooks', [])] == []
    test_script = os.path.join(os.path.dirname(mmseg.__file__), '.mim',
                               'tools', 'test.py')
    proc = subprocess.run(
        [sys.executable, '-c', 'import runpy, sys; sys.argv = sys.argv[1:]; '
         "runpy.run_path(sys.argv[0], run_name='__main__'); "
         "print('PLUGIN', 'mmext_init' in sys.modules)",
         test_script, plain_config, out, '--work-dir',
         str(tmp_path / 'test')], cwd=str(tmp_path), text=True,
        capture_output=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'mIoU' in proc.stdout + proc.stderr
    assert 'PLUGIN False' in proc.stdout
