"""The last step of inserting: a merged LoRA checkpoint predicts what the trained
inserted model predicts, through the libraries' own, unchanged
``tools/test.py``, and the plain side runs without mmext_init.

Per case (tiny RetinaNet-Swin with LoRA on mmdet, tiny SegFormer with LoRA
on mmseg), once per module:

1. ``tools/train.py`` trains the LoRA config 4 iterations with
   ``DeltaCheckpointHook`` (the same run as tests/e2e/test_insert_scripts.py:
   the ``train`` fixture shares it when both files run in one session);
2. ``tools/merge_inserted.py`` folds base (the stock tiny checkpoint the
   config loads) + ``delta_iter_4.pth`` into ``merged.pth``;
3. ``tools/test.py`` dumps predictions three times:

   * ``inserted``: the LoRA config (mmext_init imported) on ``iter_4.pth``,
     the full checkpoint the train run wrote. That is the model as trained,
     straight from the Runner, and it is produced independently of the merge
     input (base + delta), so the comparison also covers "base + delta is
     the trained model" (test_insert_scripts.py proves that bit for bit
     in-process; stock ``tools/test.py`` loads one file, not a stack);
   * ``merged``: the plain config (the LoRA config with ``model.insert`` and
     ``custom_imports`` removed) on ``merged.pth``;
   * ``unmerged``: the plain config on the trained weights without their
     ``lora_*`` tensors (``iter_4.pth`` stripped): the trained model minus
     exactly what LoRA adds. Stock ``base.pth`` would differ in the trained
     neck/head too; this isolates LoRA, so it shows that LoRA changed the
     outputs by more than the tolerances below (the comparison can fail).

   The plain runs go through a ``sitecustomize`` that blocks and records any
   import of ``mmext_init`` (its examples included); the inserted run goes
   through it unblocked, to show that the probe sees the plugin there.

Dumps: mmdet's ``--out results.pkl`` (DumpDetResults: boxes, scores,
labels), with ``model.test_cfg.score_thr=0`` (after 4 iterations no score
reaches the default 0.05 and the dump would be empty). mmseg 1.2.2's
``--out DIR`` only writes argmax PNGs, so its runs add MMEngine's
``DumpResults`` to ``test_evaluator``: ``seg_logits`` and ``pred_sem_seg``.

Tolerances. Scores: atol 1e-7 (the tiny detector's scores all sit near
0.011-0.013; folding LoRA in float32 moves them by ~1e-8, while LoRA itself,
B ~2e-4 after 4 SGD steps, moves them by ~1e-6: a looser atol such as 1e-4
could not tell the merged model from the unmerged one). Boxes: atol 1e-3 px
(a float32 ulp at 128 px is 1.5e-5). Logits: atol 1e-5. The detector's
scores are nearly tied (dozens of gaps below 1e-5 per image), so
predictions are matched one to one, not by rank: same label, score within
the tolerance, box within the tolerance; a prediction may stay unmatched
only when an unmatched one of the other run has the same label and a tied
score (NMS keeping the other of two tied boxes). The sorted score vectors
must agree element-wise too. Label maps must be identical except at pixels
whose two best logits are tied within 2 x the logit tolerance.
"""
import ast
import os
import re
import subprocess
import sys
from typing import Dict, Tuple

import mmengine
import pytest
import torch
from conftest import REPO, checkpoint_state, library_script, subprocess_env
from mmengine.config import Config
from test_insert_scripts import DELTA_HOOK, STOCK

pytestmark = pytest.mark.e2e

CASES = [('configs/mmdet/retinanet_swin_lora_tiny.py', 'mmdet'),
         ('configs/mmseg/segformer_mit_lora_tiny.py', 'mmseg')]
IDS = ['swin_lora', 'segformer_lora']
SCORE_ATOL, BOX_ATOL, LOGIT_ATOL = 1e-7, 1e-3, 1e-5
RUNS = ('inserted', 'merged', 'unmerged')
PLUGIN = ('mmext_init',)
# What each derived test config adds to its base ({out}: the dump).
OVERRIDES = {
    'mmdet': 'model = dict(test_cfg=dict(score_thr=0.0))\n',
    'mmseg': "test_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU'])"
             ", dict(type='DumpResults', out_file_path={out!r})]\n",
}
# Imported at interpreter start (PYTHONPATH): with MMEXT_BLOCK_PLUGIN set,
# importing the plugin fails, and at exit it prints the attempts and the
# plugin modules loaded.
SITECUSTOMIZE = '''import atexit, os, sys
PLUGIN = {plugin!r}
attempts = []
class BlockPlugin:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in PLUGIN:
            attempts.append(name)
            raise ImportError(name + ' is blocked in this run')
        return None
if os.environ.get('MMEXT_BLOCK_PLUGIN'):
    sys.meta_path.insert(0, BlockPlugin())
atexit.register(lambda: print('PLUGIN PROBE', sorted(
    m for m in sys.modules if m.split('.')[0] in PLUGIN), attempts,
    flush=True))
'''
PROBE = re.compile(r'^PLUGIN PROBE (\[.*?\]) (\[.*?\])$', re.M)
MISMATCH = 'do not match exactly'  # MMEngine's load_state_dict warning


def plain_config(config: str, out: str) -> Config:
    """``config`` without ``model.insert`` and ``custom_imports``, dumped
    to ``out`` (read without importing the plugin). What else is left is
    never built by tools/test.py: the optimizer constructor
    (``ProvenanceOptimWrapperConstructor``) and mmseg's backbone
    ``init_cfg`` (``min_loaded``) only matter to training."""
    cfg = Config.fromfile(os.path.join(REPO, config),
                          import_custom_modules=False)
    cfg.model.pop('insert')
    cfg.pop('custom_imports')
    cfg.dump(out)
    return Config.fromfile(out, import_custom_modules=False)


def run_test_script(library: str, base: str, checkpoint: str, folder: str,
                    name: str, cwd: str, block: bool) -> Tuple[list, str]:
    """The library's tools/test.py on ``base`` + the dump override: the
    dumped predictions and the output (stdout + stderr)."""
    out = os.path.join(folder, f'{name}.pkl')
    config = os.path.join(folder, f'{name}.py')
    with open(config, 'w') as f:
        f.write(f'_base_ = {base!r}\n' + OVERRIDES[library].format(out=out))
    cmd = [sys.executable, library_script(library, 'test'), config,
           checkpoint, '--work-dir', os.path.join(folder, f'work_{name}')]
    if library == 'mmdet':
        cmd += ['--out', out]
    env = subprocess_env()
    env['PYTHONPATH'] = os.pathsep.join([os.path.join(folder, 'probe'),
                                         env['PYTHONPATH']])
    env.pop('MMEXT_BLOCK_PLUGIN', None)
    if block:
        env['MMEXT_BLOCK_PLUGIN'] = '1'
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True,
                          capture_output=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, ' '.join(cmd) + '\n' + output[-5000:]
    return mmengine.load(out), output


@pytest.fixture(scope='module', params=CASES, ids=IDS)
def case(request, train, tiny_dir, tmp_path_factory) -> Dict:
    """Train, merge and the three tools/test.py runs of one case."""
    config, library = request.param
    run = train(config, library, extra_hooks=DELTA_HOOK)
    folder = str(tmp_path_factory.mktemp(f'merge_predictions_{library}'))
    os.makedirs(os.path.join(folder, 'probe'))
    with open(os.path.join(folder, 'probe', 'sitecustomize.py'), 'w') as f:
        f.write(SITECUSTOMIZE.format(plugin=PLUGIN))
    trained = os.path.join(run.work_dir, 'iter_4.pth')
    delta = os.path.join(run.work_dir, 'delta_iter_4.pth')
    merged = os.path.join(folder, 'merged.pth')
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, 'tools', 'merge_inserted.py'),
         os.path.join(REPO, config),
         os.path.join('checkpoints', STOCK[config]), '--delta', delta,
         '--out', merged], cwd=tiny_dir, env=subprocess_env(), text=True,
        capture_output=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = checkpoint_state(trained)
    unmerged = os.path.join(folder, 'unmerged.pth')
    torch.save({'state_dict': {k: v for k, v in state.items()
                               if '.lora_' not in k}}, unmerged)
    plain_path = os.path.join(folder, 'plain.py')
    plain = plain_config(config, plain_path)
    with open(plain_path) as f:
        plain_text = f.read()
    results, outputs = {}, {}
    for name, base, checkpoint in (
            ('inserted', os.path.join(REPO, config), trained),
            ('merged', plain_path, merged),
            ('unmerged', plain_path, unmerged)):
        results[name], outputs[name] = run_test_script(
            library, base, checkpoint, folder, name, tiny_dir,
            block=name != 'inserted')
    return dict(library=library, run=run, state=state, delta=delta,
                merged=merged, merge_log=proc.stdout, plain=plain,
                plain_text=plain_text, results=results,
                outputs=outputs)


def lora_b(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith('.lora_B.weight')}


def test_lora_trained_and_merged(case):
    """LoRA B starts at zero and is non-zero after training (else merged
    and unmerged would be the same model and nothing is tested); the
    delta carries it; the merge folded it and was proven."""
    assert lora_b(case['run'].snapshots[0])
    assert all(torch.count_nonzero(v) == 0
               for v in lora_b(case['run'].snapshots[0]).values())
    for state in (case['state'], checkpoint_state(case['delta'])):
        trained = lora_b(state)
        assert trained and all(torch.count_nonzero(v) > 0
                               for v in trained.values())
    largest = max(v.abs().max().item()
                  for v in lora_b(case['state']).values())
    print(f"\n{case['library']}: largest trained |lora_B| {largest:.3e}")
    assert 'merge proven' in case['merge_log']
    merged = torch.load(case['merged'], weights_only=True)
    assert merged['meta']['insert'] == []
    assert not [k for k in merged['state_dict'] if 'lora' in k]


def test_plain_runs_without_the_plugin(case):
    """The plain config has no insert and no custom_imports, and its
    tools/test.py runs neither imported nor tried to import mmext_init;
    the inserted run did import it (the probe works). Every checkpoint
    loaded without missing or unexpected keys."""
    assert 'custom_imports' not in case['plain']
    assert 'insert' not in case['plain'].model
    assert 'mmext' not in case['plain_text']
    for name, output in case['outputs'].items():
        probes = PROBE.findall(output)
        assert len(probes) == 1, (name, output[-3000:])
        loaded, attempts = map(ast.literal_eval, probes[0])
        if name == 'inserted':
            assert 'mmext_init' in loaded, name
        else:
            assert (loaded, attempts) == ([], []), name
        assert MISMATCH not in output, (name, output[-5000:])
        assert 'Load checkpoint from' in output, name


def match_detections(ref: dict, other: dict) -> Dict[str, float]:
    """One image's predictions (``pred_instances``) matched one to one;
    the largest score and box differences of the matched pairs, the
    sorted score vectors' largest difference, and how many predictions
    stayed unmatched with (``tie_swaps``) and without a tied counterpart
    (``unmatched``)."""
    sa, ba, la = ref['scores'], ref['bboxes'], ref['labels']
    sb, bb, lb = other['scores'], other['bboxes'], other['labels']
    stats = dict(count=abs(len(sa) - len(sb)), score=0.0, box=0.0,
                 sorted_score=float('inf'), tie_swaps=0, unmatched=0)
    if len(sa) != len(sb):
        return stats
    stats['sorted_score'] = (sa.sort().values - sb.sort().values).abs().max(
    ).item() if len(sa) else 0.0
    used = torch.zeros(len(sb), dtype=torch.bool)
    left = []
    for i in range(len(sa)):
        ok = (lb == la[i]) & ~used & ((sb - sa[i]).abs() <= SCORE_ATOL)
        box = (bb - ba[i]).abs().amax(dim=1).masked_fill(~ok, float('inf'))
        j = int(box.argmin()) if len(box) else -1
        if j >= 0 and box[j] <= BOX_ATOL:
            used[j] = True
            stats['score'] = max(stats['score'], (sb[j] - sa[i]).abs().item())
            stats['box'] = max(stats['box'], box[j].item())
        else:
            left.append(i)
    for i in left:  # NMS kept the other of two tied boxes?
        tied = (lb == la[i]) & ~used & ((sb - sa[i]).abs() <= SCORE_ATOL)
        if tied.any():
            used[int(tied.nonzero()[0])] = True
            stats['tie_swaps'] += 1
        else:
            stats['unmatched'] += 1
    return stats


def compare_detections(ref: list, other: list) -> Dict[str, float]:
    """:func:`match_detections` over the images (by path), worst values."""
    assert [r['img_path'] for r in ref] == [r['img_path'] for r in other]
    worst: Dict[str, float] = {}
    for a, b in zip(ref, other):
        for key, value in match_detections(a['pred_instances'],
                                           b['pred_instances']).items():
            summed = key in ('count', 'tie_swaps', 'unmatched')
            worst[key] = worst.get(key, 0) + value if summed else \
                max(worst.get(key, 0), value)
    worst['predictions'] = sum(len(r['pred_instances']['scores'])
                               for r in ref)
    return worst


def detections_agree(stats: Dict[str, float]) -> bool:
    return (stats['count'] == 0 and stats['unmatched'] == 0
            and stats['sorted_score'] <= SCORE_ATOL
            and stats['score'] <= SCORE_ATOL and stats['box'] <= BOX_ATOL)


def compare_segmentations(ref: list, other: list) -> Dict[str, float]:
    """Largest logit difference, label-map pixels that differ (all, and
    those not at a near-tie of ref's two best logits)."""
    assert [r['img_path'] for r in ref] == [r['img_path'] for r in other]
    stats = dict(logit=0.0, pixels=0, untied_pixels=0, total_pixels=0)
    for a, b in zip(ref, other):
        la, lb = a['seg_logits']['data'], b['seg_logits']['data']
        pa, pb = a['pred_sem_seg']['data'], b['pred_sem_seg']['data']
        assert la.shape == lb.shape and pa.shape == pb.shape
        stats['logit'] = max(stats['logit'], (la - lb).abs().max().item())
        top2 = la.topk(2, dim=0).values
        tied = (top2[0] - top2[1]) <= 2 * LOGIT_ATOL
        differ = pa != pb
        stats['pixels'] += int(differ.sum())
        stats['untied_pixels'] += int((differ & ~tied).sum())
        stats['total_pixels'] += pa.numel()
    return stats


def segmentations_agree(stats: Dict[str, float]) -> bool:
    return stats['logit'] <= LOGIT_ATOL and stats['untied_pixels'] == 0


COMPARE = {'mmdet': (compare_detections, detections_agree),
           'mmseg': (compare_segmentations, segmentations_agree)}


def test_merged_checkpoint_predicts_as_the_inserted_model(case):
    """Stock tools/test.py, plain config + merged.pth: the predictions of
    the inserted config on the trained checkpoint, within the tolerances
    (module docstring)."""
    results = case['results']
    assert len(results['inserted']) == len(results['merged']) > 0
    compare, agree = COMPARE[case['library']]
    if case['library'] == 'mmdet':
        assert all(len(r['pred_instances']['scores']) > 0
                   for r in results['inserted'])
    else:
        assert all('seg_logits' in r for r in results['inserted'])
    stats = compare(results['inserted'], results['merged'])
    print(f"\n{case['library']} inserted vs merged: {stats}")
    assert agree(stats), stats


def test_lora_changes_the_predictions(case):
    """The same comparison fails for the trained model without its LoRA
    tensors: LoRA moved the predictions by more than the tolerances, so
    the test above can tell a right merge from a wrong one."""
    results = case['results']
    compare, agree = COMPARE[case['library']]
    stats = compare(results['inserted'], results['unmerged'])
    print(f"\n{case['library']} inserted vs unmerged: {stats}")
    assert not agree(stats), stats
    if case['library'] == 'mmdet':  # by far more than the tolerance
        assert stats['count'] > 0 or stats['sorted_score'] > 10 * SCORE_ATOL
    else:
        assert stats['logit'] > 100 * LOGIT_ATOL
