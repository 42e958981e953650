"""The extended ``Pretrained`` init type.

Registered under the stock name in MMEngine's root ``WEIGHT_INITIALIZERS``
(see :mod:`mmext_init.plugin.patches`); keeps the stock arguments
(``checkpoint``, ``prefix``, ``map_location``) and adds the options of
:class:`~mmext_init.loading.options.PretrainedOptions`.

Example:
    >>> entry = PretrainedInit('ckpt/retinanet.pth', prefix='backbone.',
    ...                        init_missing=dict(type='Kaiming',
    ...                                          layer='Conv2d'),
    ...                        min_loaded=0.9)
    >>> entry.mapping.prefix, [c['type'] for c in entry.init_missing]
    ('backbone.', ['Kaiming'])
"""
import torch.nn as nn

from ..loading.options import PretrainedOptions
from ..session.init_session import run_pretrained_alone


class PretrainedInit(PretrainedOptions):
    """Load a checkpoint into a module; everything it does not provide gets
    its declared init (see the contract, ``docs/guides/contract.md``).

    Args:
        checkpoint (str): checkpoint file (``.pth``; Runner checkpoints work).
        prefix (str, optional): take the checkpoint sub-tree under this key
            prefix, e.g. ``'backbone.'``.
        map_location (str): as for ``torch.load``. Defaults to ``'cpu'``.
        init_missing (dict | list[dict], optional): init cfg(s) applied only
            to tensors the checkpoint did not provide (``layer``/``override``
            grammar of ``init_cfg``).
        on_missing (str): ``'warn'`` | ``'error'`` | ``'ignore'`` for tensors
            left with no declared init at all.
        strict (bool): fail on any missing or unexpected key.
        revise_keys (list[tuple[str, str]]): ``(regex, replacement)`` pairs
            applied to checkpoint keys (``re.sub``, as stock).
        ignore_keys (list[str]): regexes of checkpoint keys to skip, each
            matching whole keys (``re.fullmatch``).
        key_map (dict[str, str]): explicit checkpoint key -> model key
            (relative to this module); mapped keys skip ``revise_keys`` and
            ``prefix``.
        min_loaded (float, optional): fraction of the module's parameter
            elements that must come from the checkpoint, the checkpoint's
            part of partly adapted tensors included (default: > 0).
        on_mismatch (str): ``'warn'`` (default: listed in the report, the
            tensor gets its declared init) or ``'error'``.
        match (str): ``'exact'`` (default) or ``'suffix'``: a checkpoint key
            also matches the model key it is a dotted suffix of (or vice
            versa); the longest match wins, ties are an error.
        converter (str, optional): a registered ``CHECKPOINT_CONVERTERS``
            name (``'TimmViT'``, ``'SwinOfficial'``) applied to the
            checkpoint's keys first.
        adapt (list[dict]): shape adaptation transforms (``ADAPT_TRANSFORMS``,
            e.g. ``ResizePosEmbed``) for shape-mismatched tensors.
        use_ema (bool): take the EMA weights (MMEngine ``EMAHook`` or
            ``ema_`` buffers); an error when the checkpoint has none.
        trust_checkpoint (bool): unpickle arbitrary objects (runs code from
            the file). Defaults to False.
        check_finite (bool): refuse NaN/Inf values. Defaults to True.

    Example:
        >>> import os, tempfile, torch, torch.nn as nn
        >>> from mmengine.model import initialize
        >>> path = os.path.join(tempfile.mkdtemp(), 'fc.pth')
        >>> torch.save({'weight': torch.ones(2, 2), 'bias': torch.ones(2)},
        ...            path)
        >>> fc = nn.Linear(2, 2)
        >>> initialize(fc, dict(type='Pretrained', checkpoint=path))
        >>> float(fc.weight.sum())
        4.0
    """

    def __call__(self, module: nn.Module) -> None:
        """Used when called directly (``mmengine.model.initialize``)."""
        run_pretrained_alone(module, self)
