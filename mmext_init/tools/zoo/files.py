"""Generated files for a shipped config's checkpoint names, in the hub cache
stock MMEngine reads (no mmext_init import: the stock worker uses it). No
server: the workers run with ``TORCH_HOME`` in the config's folder and the
network closed (``worker_env``), and find the files there as after a
download.

For each reference (:func:`~mmext_init.tools.zoo.urls.find_refs`) of a config: the URL from
MMEngine's tables, the module of a stock build (every reference removed)
that loads it, and a file at ``$TORCH_HOME/hub/checkpoints/<basename>`` made
from that module (:mod:`~mmext_init.tools.zoo.layouts`). The layout is the first candidate that
stock's own loading code takes in full (or the one it takes most of): the
module is reset, given the reference as its ``init_cfg`` and initialized
with stock ``init_weights``, and its tensors compared with the file's. A
reference that gets no file (a local path, a name stock does not
download, no module found, stock loading none of it or raising on every
layout, a file name taken by another URL) is removed from the config, with
the reason.

Example:
    >>> import tempfile
    >>> import torch.nn as nn
    >>> from mmengine.model import BaseModule
    >>> from mmext_init.tools.zoo.urls import find_refs
    >>> os.environ['TORCH_HOME'] = tempfile.mkdtemp()
    >>> class Net(BaseModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(2, 2)
    >>> refs = find_refs(dict(type='Net', init_cfg=dict(
    ...     type='Pretrained', checkpoint='https://x.invalid/net.pth')))
    >>> served = make_files(Net(), refs)
    >>> served.records[0]['layout'], sorted(served.expected), served.unserved
    ('plain', ['fc.bias', 'fc.weight'], [])
"""
import copy
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import ConfigDict

from mmext_init.tools.zoo.layouts import State, candidate_layouts, floats, random_state
from mmext_init.tools.zoo.models import bit_equal, first_line
from mmext_init.tools.zoo.urls import Ref, checkpoint_url, hub_cache_path, loader_modules


CLOSED = 'http://127.0.0.1:9'  # discard port: a download fails at once
PROXY_VARS = ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY')


@dataclass
class Files:
    """``records``: one dict per reference (name, url, file, layout,
    modules, tensors the probe saw loaded, or ``skip``); ``expected``: model
    tensor name -> value a load gives it; ``unserved``: refs to remove."""
    records: List[Dict[str, Any]] = field(default_factory=list)
    expected: State = field(default_factory=dict)
    unserved: List[Ref] = field(default_factory=list)


def make_files(model: nn.Module, refs: List[Ref]) -> Files:
    """Write a file for every reference of ``model``'s config (see the
    module docstring); ``model`` is a stock build without references."""
    served = Files()
    by_url: Dict[str, Tuple[str, State]] = {}  # url -> (layout, state)
    for ref in refs:
        where = ref.path + (('pretrained',) if ref.kind == 'pretrained'
                            else ())
        record: Dict[str, Any] = dict(name=ref.name, config_path='.'.join(
            str(k) for k in where))
        try:
            layout, expected = _make_file(model, ref, record, by_url)
        except _NoFile as why:
            record['skip'] = str(why)
            served.unserved.append(ref)
        else:
            record['layout'] = layout
            served.expected.update(expected)
        served.records.append(record)
    return served


class _NoFile(Exception):
    """Why a reference gets no file."""


def _make_file(model: nn.Module, ref: Ref, record: Dict[str, Any],
           by_url: Dict[str, Tuple[str, State]]) -> Tuple[str, State]:
    try:
        url = checkpoint_url(ref.name)
    except ValueError as exc:
        raise _NoFile(str(exc)) from None
    modules = loader_modules(model, ref)
    if not modules:
        raise _NoFile(f'no module of type {ref.module_type} found for '
                        f'config path {record["config_path"]}')
    path = hub_cache_path(url)
    record.update(url=url, file=path, modules=modules)
    if url in by_url:  # a second module loading the same file
        layout, state = by_url[url]
        if layout == 'plain':  # the file holds its keys too (C4 heads)
            state = _with_keys_of(model.get_submodule(modules[0]), state,
                                  url + '#' + record['config_path'], path)
            by_url[url] = (layout, state)
        return layout, _expected_for(model, modules, floats(state))
    if os.path.exists(path):
        raise _NoFile(f'{os.path.basename(path)} is already the file of '
                        'another URL of this config')
    module = model.get_submodule(modules[0])
    state = random_state(module, url)
    layout, state, loaded = _probe(module, ref, url, state, path)
    record['probe_loaded'] = f'{loaded} of {len(floats(state))}'
    by_url[url] = (layout, state)
    return layout, _expected_for(model, modules, state)


def _with_keys_of(module: nn.Module, state: State, seed: str,
                  path: str) -> State:
    """``state`` plus random values for the keys of ``module`` it lacks,
    written to ``path`` (a file shared by modules with different keys: the
    ResNet file of a C4 detector's backbone and its ``shared_head``)."""
    extra = {k: v for k, v in random_state(module, seed).items()
             if k not in state}
    if not extra:
        return state
    saved = torch.load(path, weights_only=True)  # written by _probe
    saved['state_dict'].update(extra)
    torch.save(saved, path)
    return OrderedDict(list(state.items()) + list(extra.items()))


def _expected_for(model: nn.Module, modules: List[str],
                  state: State) -> State:
    out: State = {}
    own = model.state_dict()
    for name in modules:
        for key, value in state.items():
            full = f'{name}.{key}' if name else key
            if full in own and own[full].shape == value.shape:
                out[full] = value
    return out


def _probe(module: nn.Module, ref: Ref, url: str, state: State,
           path: str) -> Tuple[str, State, int]:
    """Try the candidate layouts with stock's loader; leave the chosen file
    at ``path``; (layout, expected module state, tensors loaded)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    entry = ConfigDict(ref.entry or dict(type='Pretrained',
                                         checkpoint=ref.name))
    best: Optional[Tuple[int, str, Any, State]] = None
    errors: List[str] = []
    for label, obj, expected in candidate_layouts(
            ref.name, url, module, state, ref.entry.get('prefix')):
        torch.save(obj, path)
        loaded, error = _load_once(module, entry, saved, expected)
        if error:
            errors.append(f'{label}: {error}')
        if loaded and (best is None or loaded > best[0]):
            best = (loaded, label, obj, expected)
        if loaded == len(expected):
            break
    module.load_state_dict(saved)
    if best is None:
        os.remove(path)
        tried = errors or ['no tensor of the module took a file value']
        raise _NoFile(f'stock loads nothing of {url} in any layout '
                        f'({"; ".join(tried)})'[:500])
    torch.save(best[2], path)
    return best[1], best[3], best[0]


def _load_once(module: nn.Module, entry: ConfigDict, saved: State,
               expected: State) -> Tuple[int, Optional[str]]:
    """Reset ``module``, stock ``init_weights`` with ``entry`` as its
    ``init_cfg``; (tensors equal to ``expected``, stock's error or None)."""
    module.load_state_dict(saved)
    for sub in module.modules():
        if hasattr(sub, '_is_init'):
            sub._is_init = False
    before = getattr(module, 'init_cfg', None)
    module.init_cfg = copy.deepcopy(entry)
    error = None
    try:
        module.init_weights()
    except Exception as exc:  # stock refuses this layout: try the next
        error = first_line(exc)
    finally:
        module.init_cfg = before
    now = module.state_dict()
    return sum(1 for k, v in expected.items()
               if k in now and bit_equal(now[k], v)), error


def worker_env(out: str) -> Dict[str, str]:
    """The workers' environment: one thread, ``TORCH_HOME`` in ``out`` (the
    generated checkpoint files), proxies on a closed port (no download).

    Example:
        >>> env = worker_env('/tmp/zoo_1')
        >>> env['TORCH_HOME'], env['https_proxy']
        ('/tmp/zoo_1/torch_home', 'http://127.0.0.1:9')
    """
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               TORCH_HOME=os.path.join(out, 'torch_home'),
               **{v: CLOSED for v in PROXY_VARS})
    for name in ('no_proxy', 'NO_PROXY'):
        env.pop(name, None)
    return env
