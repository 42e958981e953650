"""Model-side helpers of the zoo sweep (no mmext_init import here: the stock
worker uses them too).

Config loading (as shipped), seeded build + ``init_weights`` with timing, a
fixed forward pass, bit-exact tensor comparison and the set of modules
stock MMEngine's recursion reaches.

Example:
    >>> import os
    >>> setup_scope('mmpretrain')
    >>> cfg = load_config(os.path.join(configs_root('mmpretrain'), 'lenet',
    ...                                'lenet5_mnist.py'), 'mmpretrain')
    >>> model, seconds = build_and_init(cfg.model)
    >>> sorted(seconds), type(model).__name__
    (['cpu', 'wall'], 'ImageClassifier')
"""
import copy
import importlib
import os
import random
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import BaseModule, is_model_wrapper
from mmengine.registry import MODELS, init_default_scope

PACKAGES = ('mmdet', 'mmseg')  # the default sweep
KNOWN_PACKAGES = ('mmdet', 'mmseg', 'mmpretrain', 'timm')
SCOPES = {'timm': 'mmpretrain'}  # the timm sample runs in mmpretrain's scope
SAMPLE_CLASSES = {'mmdet': 'DetDataSample', 'mmseg': 'SegDataSample',
                  'mmpretrain': 'DataSample'}
INPUT_SIZE = (128, 128)
INPUT_SIZES = {'mmpretrain': (224, 224)}  # classifiers' fixed position grids
FORWARD_SEED = 1234
PROPOSAL_CAP = 100  # test_cfg counts in the sweep's forward pass
_COUNT_KEYS = ('nms_pre', 'max_per_img', 'max_num')


def configs_root(package: str) -> str:
    """``<site-packages>/<package>/.mim/configs`` of the installed package.

    Example:
        >>> configs_root('mmdet').split(os.sep)[-3:]
        ['mmdet', '.mim', 'configs']
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f'package {package!r} is not installed')
    return os.path.join(list(spec.submodule_search_locations)[0], '.mim',
                        'configs')


def setup_scope(package: str) -> None:
    """Default scope and registries of ``package`` (mmdet, mmseg or
    mmpretrain; mmpretrain for the timm sample)."""
    package = SCOPES.get(package, package)
    importlib.import_module(f'{package}.utils').register_all_modules(
        init_default_scope=False)
    init_default_scope(package)


def seed_all(seed: int = 0) -> None:
    """Seed torch, numpy and random."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def load_config(path: str, package: str) -> Config:
    """The config as shipped, test-time proposal counts capped."""
    cfg = Config.fromfile(path)
    if not isinstance(cfg.get('model'), dict) or 'type' not in cfg.model:
        raise ValueError(f'{path} defines no model')
    cap_test_proposals(cfg.model)
    return cfg


def cap_test_proposals(node: Any, cap: int = PROPOSAL_CAP) -> int:
    """Cap the proposal and detection counts of every ``test_cfg`` below
    ``node`` (``nms_pre``, ``max_per_img``, ``max_num``) at ``cap``, in
    place; return how many were lowered. Weights do not depend on them; the
    forward pass on 1000 proposals of a 1203-class cascade mask head
    (``seesaw_loss``) needs more than 24 GiB.

    Example:
        >>> model = dict(test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=1000),
        ...                            rcnn=dict(max_per_img=100)))
        >>> cap_test_proposals(model), model['test_cfg']['rpn']
        (2, {'nms_pre': 100, 'max_per_img': 100})
    """
    lowered = 0
    if isinstance(node, list):
        return sum(cap_test_proposals(item, cap) for item in node)
    if not isinstance(node, dict):
        return 0
    for key, value in node.items():
        if key == 'test_cfg':
            lowered += _cap_counts(value, cap)
        else:
            lowered += cap_test_proposals(value, cap)
    return lowered


def _cap_counts(node: Any, cap: int) -> int:
    if isinstance(node, list):
        return sum(_cap_counts(item, cap) for item in node)
    if not isinstance(node, dict):
        return 0
    lowered = 0
    for key, value in node.items():
        if key in _COUNT_KEYS and isinstance(value, int) and value > cap:
            node[key] = cap
            lowered += 1
        else:
            lowered += _cap_counts(value, cap)
    return lowered


def with_init_cfg(model_cfg: Dict, where: Optional[str], entry: Dict) -> Dict:
    """A copy of ``model_cfg`` whose ``init_cfg`` (of the model when
    ``where`` is None, else of the sub-config ``where``) is ``entry``."""
    out = copy.deepcopy(model_cfg)
    (out if where is None else out[where])['init_cfg'] = entry
    return out


def build_and_init(model_cfg: Dict, seed: int = 0
                   ) -> Tuple[nn.Module, Dict[str, float]]:
    """Seeded ``MODELS.build`` + ``init_weights()``; returns the model (eval
    mode) and the seconds spent in both: ``wall`` (``perf_counter``) and
    ``cpu`` (``process_time``: this process only, so other load on a shared
    machine barely changes it; the workers run one thread)."""
    seed_all(seed)
    model_cfg = copy.deepcopy(model_cfg)
    wall, cpu = time.perf_counter(), time.process_time()
    model = MODELS.build(model_cfg)
    model.init_weights()
    seconds = dict(wall=time.perf_counter() - wall,
                   cpu=time.process_time() - cpu)
    return model.eval(), seconds


def state_of(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Detached ``state_dict`` (parameters and persistent buffers)."""
    return {k: v.detach() for k, v in model.state_dict().items()}


def runner_checkpoint(state: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """What an MMEngine Runner writes: numpy values in ``meta``."""
    return {
        'meta': {'epoch': np.int64(12), 'iter': np.int64(1000),
                 'seed': np.int64(0), 'lr': np.float64(0.02),
                 'mmengine_version': '0.10.7'},
        'state_dict': state,
        'message_hub': {'log_scalars': {}, 'runtime_info': {
            'epoch': np.int64(12), 'iter': np.int64(1000)}},
    }


def _batch(package: str) -> Dict[str, list]:
    """One seeded uint8 image with the data sample the model expects."""
    gen = torch.Generator().manual_seed(FORWARD_SEED)
    package = SCOPES.get(package, package)
    h, w = INPUT_SIZES.get(package, INPUT_SIZE)
    image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                scale_factor=(1.0, 1.0))
    structures = importlib.import_module(f'{package}.structures')
    sample_cls = getattr(structures, SAMPLE_CLASSES[package])
    return dict(inputs=[image], data_samples=[sample_cls(metainfo=meta)])


def forward_outputs(model: nn.Module, package: str
                    ) -> Tuple[Optional[Dict[str, torch.Tensor]], str]:
    """Outputs of ``model(..., mode='tensor')`` (else ``extract_feat``) on a
    fixed seeded image (128x128, mmpretrain 224x224), flattened by name (``tensor.0.1``,
    ``extract_feat.2``); ``(None, reason)`` when neither runs."""
    reasons = []
    for how in ('tensor', 'extract_feat'):
        try:
            seed_all(FORWARD_SEED)
            with torch.no_grad():
                data = model.data_preprocessor(_batch(package), False)
                if how == 'tensor':
                    out = model(**data, mode='tensor')
                else:
                    out = model.extract_feat(data['inputs'])
            return flatten_outputs(out, how), how
        except Exception as exc:  # a model without that forward: say why
            reasons.append(f'{how}: {first_line(exc)}')
    return None, '; '.join(reasons)


def flatten_outputs(out: Any, prefix: str = 'out') -> Dict[str, torch.Tensor]:
    """Nested tuples/lists/dicts of tensors -> ``{'out.0.1': tensor}``."""
    if isinstance(out, torch.Tensor):
        return {prefix: out.detach()}
    items: List[Tuple[Any, Any]] = []
    if isinstance(out, dict):
        items = list(out.items())
    elif isinstance(out, (list, tuple)):
        items = list(enumerate(out))
    flat: Dict[str, torch.Tensor] = {}
    for key, value in items:
        flat.update(flatten_outputs(value, f'{prefix}.{key}'))
    return flat


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaN payloads included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point() or a.is_complex():
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32,
                8: torch.int64}[a.element_size()]
        a, b = a.contiguous().view(bits), b.contiguous().view(bits)
    return torch.equal(a, b)


def differing(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]
              ) -> List[str]:
    """Names (in ``a``'s order, then ``b``'s extra ones) whose tensors are
    not bit-identical or exist on one side only."""
    names = [n for n in a if n not in b or not bit_equal(a[n], b[n])]
    return names + [n for n in b if n not in a]


def stock_reach(model: nn.Module) -> Tuple[Set[str], Set[str]]:
    """After stock ``init_weights()``: (modules whose ``init_weights`` the
    recursion called, modules whose ``BaseModule.init_weights`` body ran).

    Stock's body (``_is_init`` set at its end) calls ``init_weights`` of
    every *direct* child that has one; an override that does not call
    ``super()`` stops the recursion. So: called = root, plus the direct
    children having ``init_weights`` of every module whose body ran, plus
    the modules whose body ran (an override may call them itself)."""
    names = {id(m): n for n, m in model.named_modules()}
    body_ran = {n for n, m in model.named_modules()
                if getattr(m, '_is_init', False)}
    called = {''} | set(body_ran)
    for name, module in model.named_modules():
        if name not in body_ran:
            continue
        for child in module.children():
            if is_model_wrapper(child) and not hasattr(child, 'init_weights'):
                child = child.module
            if hasattr(child, 'init_weights'):
                called.add(names.get(id(child), ''))
    return called, body_ran


def overrides_init_weights(cls: type) -> bool:
    """Whether a class between ``cls`` and ``BaseModule`` defines its own
    ``init_weights`` (its modules may read a checkpoint themselves)."""
    for cls in cls.__mro__:
        if cls is BaseModule:
            return False
        if 'init_weights' in vars(cls):
            return True
    return False


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip().splitlines()
    line = ' '.join(text[0].split()) if text else ''
    return f'{type(exc).__name__}: {line}'[:300]


def alias_of(model: nn.Module) -> Dict[str, str]:
    """``{name: first name}`` for state-dict entries that are the same
    tensor as an earlier one (tied weights, e.g. RetinaSepBNHead's convs)."""
    seen: Dict[Tuple[int, Tuple[int, ...], Tuple[int, ...]], str] = {}
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            out[name] = seen[key]
        seen.setdefault(key, name)
    return out
