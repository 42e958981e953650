"""Checkpoint names as stock MMEngine reads them, resolved to a local file.

MMEngine's ``CheckpointLoader`` reads a checkpoint by scheme: a local path,
``http(s)://`` (downloaded into torch hub's cache,
``$TORCH_HOME/hub/checkpoints/<file>``, or read from there), names mapped to
URLs by MMEngine's model-zoo tables (``open-mmlab://``, ``openmmlab://``,
``torchvision://``, ``modelzoo://``, ``mmcls://``), ``pavi://``, and the
``s3://`` / ``petrel://`` storage backends of :mod:`mmengine.fileio`.
:func:`resolve_checkpoint` applies the same mapping, cache location and
download, and returns the local file, which the safe reader then reads (stock
reads a downloaded file with ``weights_only=False``, running code from it).

Example (a URL whose file is already in the cache, as after one online run):
    >>> import os, tempfile, torch
    >>> os.environ['TORCH_HOME'] = tempfile.mkdtemp()
    >>> url = 'https://download.openmmlab.com/x/net_20220101-abcd.pth'
    >>> os.makedirs(os.path.dirname(hub_cache_path(url)))
    >>> torch.save({'w': torch.ones(1)}, hub_cache_path(url))
    >>> found = resolve_checkpoint(url)
    >>> found.path == hub_cache_path(url), found.url == url
    (True, True)
    >>> resolve_checkpoint('r18.pth').path
    'r18.pth'
"""
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional
from urllib.parse import urlparse

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.fileio import get_file_backend
from mmengine.logging import print_log
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from ..errors import (CheckpointDownloadError, CheckpointNameError,
                      CheckpointNotFoundError, close_names)

HTTP = ('http://', 'https://')
OPENMMLAB = ('open-mmlab://', 'openmmlab://')
TORCHVISION = ('torchvision://', 'modelzoo://')
MMCLS = 'mmcls://'
PAVI = 'pavi://'
CEPH = (r'(\S+\:)?s3://', r'(\S+\:)?petrel://')
# What a download can raise when there is no network or no file: URLError
# and HTTPError (OSError subclasses), timeouts, and a half-written file.
_DOWNLOAD_ERRORS = (OSError, ValueError, RuntimeError)


@dataclass
class LocalCheckpoint:
    """A checkpoint name resolved: the local ``path`` to read, the ``url``
    it was downloaded from (None for a local file), whether only its
    ``backbone.`` keys count, prefix stripped (``mmcls://``, as stock's
    ``_process_mmcls_checkpoint``), and for a scheme registered by another
    package the object its loader returned (``loaded``, then ``path`` is
    the name)."""
    name: str
    path: str
    url: Optional[str] = None
    backbone_only: bool = False
    loaded: Any = None
    keep: Any = None  # a TemporaryDirectory holding a copied remote file

    @property
    def is_local(self) -> bool:
        """Read where the name points (no download, copy or other loader):
        files beside it, such as shards, are there too."""
        return (self.url is None and self.keep is None
                and self.loaded is None)


def hub_cache_path(url: str) -> str:
    """Where torch hub (and so stock MMEngine) caches ``url``'s file.

    Example:
        >>> import os
        >>> os.environ['TORCH_HOME'] = '/data/torch'
        >>> hub_cache_path('https://host/a/b/r50.pth?x=1')
        '/data/torch/hub/checkpoints/r50.pth'
    """
    name = os.path.basename(urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), 'checkpoints', name)


def mmengine_home() -> str:
    """MMEngine's home, where ``open-mmlab://`` names that are not URLs
    live (``$MMENGINE_HOME``, else ``$XDG_CACHE_HOME/mmengine``)."""
    cache = os.getenv('XDG_CACHE_HOME', os.path.join('~', '.cache'))
    return os.path.expanduser(
        os.getenv('MMENGINE_HOME', os.path.join(cache, 'mmengine')))


def _download(url: str, cached: str, label: str, name: str) -> None:
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    print_log(f'mmext_init: downloading {url} to {cached}', logger='current')
    try:
        torch.hub.download_url_to_file(url, cached, progress=False)
    except _DOWNLOAD_ERRORS as exc:
        named = f' (the file of {name})' if name != url else ''
        raise CheckpointDownloadError(
            f'{label}: cannot download {url}{named} '
            f'({type(exc).__name__}: {exc}). '
            f'Offline, put the file at {cached} (torch hub\'s cache, '
            '$TORCH_HOME/hub/checkpoints) and run again.') from exc


def cached_download(url: str, label: str = 'checkpoint',
                    name: Optional[str] = None) -> str:
    """The cache file of ``url`` (the file of ``name``, a scheme name),
    downloaded first if it is not there (in a distributed run by rank 0, the
    others waiting, as stock does)."""
    cached = hub_cache_path(url)
    rank, world_size = get_dist_info()
    if rank == 0 and not os.path.isfile(cached):
        _download(url, cached, label, name or url)
    if world_size > 1:
        barrier()
        if not os.path.isfile(cached):
            _download(url, cached, label, name or url)
    return cached


def _table_entry(table: Dict[str, str], name: str, model: str, table_name: str,
                 label: str) -> str:
    if model not in table:
        near = close_names(model, table)
        raise CheckpointNameError(
            f'{label}: {name}: {model!r} is not in {table_name}' +
            (f'; did you mean {near}?' if near else ''))
    return table[model]


def _from_url(name: str, url: str, label: str, **kw: Any) -> LocalCheckpoint:
    return LocalCheckpoint(name, cached_download(url, label, name), url, **kw)


def _openmmlab(name: str, label: str) -> LocalCheckpoint:
    prefix = next(p for p in OPENMMLAB if name.startswith(p))
    model = name[len(prefix):]
    deprecated = mmengine_checkpoint.get_deprecated_model_names()
    if model in deprecated:
        warnings.warn(f'{prefix}{model} is deprecated in favor of '
                      f'{prefix}{deprecated[model]}', DeprecationWarning)
        model = deprecated[model]
    target = _table_entry(mmengine_checkpoint.get_external_models(), name,
                          model, "MMEngine's open-mmlab table", label)
    if target.startswith(HTTP):
        return _from_url(name, target, label)
    path = os.path.join(mmengine_home(), target)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(
            f'{label}: {name}: checkpoint file not found: {path}')
    return LocalCheckpoint(name, path)


def _torchvision(name: str, label: str) -> LocalCheckpoint:
    prefix = next(p for p in TORCHVISION if name.startswith(p))
    try:
        table = mmengine_checkpoint.get_torchvision_models()
    except ImportError as exc:
        raise ImportError(f'{label}: {name} needs torchvision, which does '
                          f'not import ({exc})') from exc
    url = _table_entry(table, name, name[len(prefix):],
                       "torchvision's model table", label)
    return _from_url(name, url, label)


def _mmcls(name: str, label: str) -> LocalCheckpoint:
    url = _table_entry(mmengine_checkpoint.get_mmcls_models(), name,
                       name[len(MMCLS):], "MMEngine's mmcls table", label)
    return _from_url(name, url, label, backbone_only=True)


def _copied(name: str, file_name: str,
            write: Callable[[str], None]) -> LocalCheckpoint:
    """``name``'s file written by ``write`` into a temporary folder that
    lives as long as the result (stock reads it from one too)."""
    keep = tempfile.TemporaryDirectory(prefix='mmext_ckpt_')
    path = os.path.join(keep.name, os.path.basename(file_name) or 'ckpt')
    write(path)
    return LocalCheckpoint(name, path, keep=keep)


def _pavi(name: str, label: str) -> LocalCheckpoint:
    try:  # an optional package of OpenMMLab's cloud, as stock imports it
        from pavi import modelcloud
    except ImportError:
        raise ImportError(
            'Please install pavi to load checkpoint from modelcloud.')
    model = modelcloud.get(name[len(PAVI):])
    return _copied(name, model.name, model.download)


def _ceph(name: str, label: str) -> LocalCheckpoint:
    backend = get_file_backend(name, backend_args={'backend': 'petrel'})

    def write(path: str) -> None:
        with open(path, 'wb') as f:
            f.write(backend.get(name))

    return _copied(name, name, write)


_RESOLVERS: Dict[Any, Callable[[str, str], LocalCheckpoint]] = {
    **{p: _openmmlab for p in OPENMMLAB},
    **{p: _torchvision for p in TORCHVISION},
    MMCLS: _mmcls, PAVI: _pavi, **{p: _ceph for p in CEPH},
    **{p: lambda name, label: _from_url(name, name, label) for p in HTTP},
}
REMOTE_SCHEMES = tuple(_RESOLVERS)  # the CheckpointLoader keys resolved here


def scheme_of(name: str) -> str:
    """The ``CheckpointLoader`` scheme key that reads ``name`` ('' for a
    local path), matched as stock matches it.

    Example:
        >>> scheme_of('open-mmlab://resnet50_v1c'), scheme_of('a/r18.pth')
        ('open-mmlab://', '')
    """
    for prefix in CheckpointLoader._schemes:
        if re.match(prefix, name) is not None:
            return prefix
    return ''


def resolve_checkpoint(name: str, label: str = 'checkpoint') -> LocalCheckpoint:
    """The local file stock MMEngine would read for ``name`` (see the
    module docstring); a scheme registered by another package is read by its
    own loader (``loaded``)."""
    scheme = scheme_of(name)
    if scheme == '':
        return LocalCheckpoint(name, os.path.expanduser(name))
    resolver = _RESOLVERS.get(scheme)
    if resolver is not None:
        return resolver(name, label)
    loaded = CheckpointLoader._schemes[scheme](name, None)
    return LocalCheckpoint(name, name, loaded=loaded)


def backbone_part(state: Dict[str, Any]) -> Dict[str, Any]:
    """The ``backbone.`` entries of a state dict, prefix stripped: what
    stock keeps of an ``mmcls://`` checkpoint.

    Example:
        >>> backbone_part({'backbone.conv.weight': 1, 'head.fc.weight': 2})
        {'conv.weight': 1}
    """
    start = len('backbone.')
    return {k[start:]: v for k, v in state.items()
            if isinstance(k, str) and k.startswith('backbone.')}
