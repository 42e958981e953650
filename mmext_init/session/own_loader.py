"""What a backbone that reads the checkpoint in its own ``init_weights``
(mmdet/mmseg ``SwinTransformer``, mmseg ``VisionTransformer``...) will do
with a ``Pretrained`` entry, predicted before it runs (the dry run, the
optimizer constructor): whether it reads it at all
(:func:`reads_checkpoint_itself`), the keys it would load
(:func:`own_loader_entries`) and the options it cannot apply
(:func:`ignored_options_error`, the error the run stops with).

Example:
    >>> from mmext_init.loading.options import PretrainedOptions
    >>> [e.mapping.prefix for e in own_loader_entries(
    ...     PretrainedOptions('seg.pth', prefix='bakbone.'), '')]
    [None]
"""
import copy
import dataclasses
import inspect
import re
from typing import List, Optional

import torch.nn as nn

from ..errors import InitConfigError
from ..loading.options import PretrainedOptions

_READS_CHECKPOINT = re.compile(
    r"load_checkpoint\(|init_cfg\s*\[\s*['\"]checkpoint['\"]\s*\]|"
    r"init_cfg\.(?:get\(\s*['\"])?checkpoint")


def reads_checkpoint_itself(module: nn.Module) -> bool:
    """Whether an ``init_weights`` override of ``module``'s class (or of a
    base of it below ``BaseModule``) reads the ``init_cfg`` checkpoint
    itself (mmdet/mmseg Swin, mmseg ViT...), seen in its source, rather
    than leaving the entry to ``BaseModule.init_weights`` through
    ``super()`` (mmdet's dense heads). An override without source counts
    as reading it.

    Example:
        >>> from mmengine.model import BaseModule
        >>> class Head(BaseModule):
        ...     def init_weights(self):
        ...         super().init_weights()
        >>> class Backbone(BaseModule):
        ...     def init_weights(self):
        ...         state = load_checkpoint(self.init_cfg['checkpoint'])
        >>> reads_checkpoint_itself(Head()), reads_checkpoint_itself(Backbone())
        (False, True)
    """
    for cls in type(module).__mro__:
        fn = cls.__dict__.get('init_weights')
        if fn is None or getattr(fn, '_mmext_contract', False):
            continue
        if cls.__module__.startswith('mmengine.'):
            break  # BaseModule's own (stock or the contract)
        try:
            source = inspect.getsource(inspect.unwrap(fn))
        except (OSError, TypeError):  # compiled or built at run time
            return True
        if _READS_CHECKPOINT.search(source):
            return True
    return False


def own_loader_entries(entry: PretrainedOptions,
                       path: str) -> List[PretrainedOptions]:
    """What a module at ``path`` whose own ``init_weights`` reads ``entry``
    is predicted to apply, in order (the first that matches anything):
    the file's keys as they are (the loader ignores ``prefix``), then, for
    a module below the root, with its path stripped (mmdet and mmseg Swin
    strip a leading ``backbone.``: a whole-model checkpoint loads). The
    ledger checks the prediction when the run loads.

    Example:
        >>> entries = own_loader_entries(
        ...     PretrainedOptions('seg.pth', prefix='bakbone.'), 'backbone')
        >>> [e.mapping.prefix for e in entries]
        [None, 'backbone.']
    """
    plain = copy.copy(entry)
    plain.mapping = dataclasses.replace(entry.mapping, prefix=None)
    if not path:
        return [plain]
    stripped = copy.copy(entry)
    stripped.mapping = dataclasses.replace(entry.mapping, prefix=f'{path}.')
    return [plain, stripped]


def ignored_options_error(label: str, owner: str, path: str,
                          entry: PretrainedOptions
                          ) -> Optional[InitConfigError]:
    """The error for the options of ``entry`` (other than ``prefix``) that
    the own ``init_weights`` of ``owner`` at ``path`` cannot honour, None if
    none is set.

    Example:
        >>> error = ignored_options_error(
        ...     "init_cfg of 'backbone' (Pretrained)", 'SwinTransformer',
        ...     'backbone', PretrainedOptions('seg.pth', revise_keys=[
        ...         (r'^backbone\\.', '')]))
        >>> print(error)  # doctest: +NORMALIZE_WHITESPACE
        init_cfg of 'backbone' (Pretrained): SwinTransformer.init_weights
        loads seg.pth itself and ignores revise_keys. Put the Pretrained
        entry on the parent module (with revise_keys=[(r"^", "backbone.")])
        or on a wrapper, where mmext_init applies every option.
    """
    ignored = entry.ignored_by_own_loader()
    if not ignored:
        return None
    child = path.rsplit('.', 1)[-1] or '<child>'
    return InitConfigError(
        f'{label}: {owner}.init_weights loads {entry.checkpoint} itself and '
        f'ignores {", ".join(ignored)}. Put the Pretrained entry on the '
        f'parent module (with revise_keys=[(r"^", "{child}.")]) or on a '
        'wrapper, where mmext_init applies every option.')
