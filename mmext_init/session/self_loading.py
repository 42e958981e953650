"""Backbones that read the checkpoint in their own ``init_weights``: errors
that say what the backbone was given and how to fix the config.

Such a backbone (mmseg ``BEiT``, ``VisionTransformer``, ``PIDNet``, mmdet
``SwinTransformer``...) opens ``init_cfg['checkpoint']`` with its own key
handling and ignores ``prefix``. On a whole-model checkpoint (keys
``backbone.*``) it then loads nothing, or fails looking a file key up among
its own tensors with a bare ``KeyError``. Both become a
:class:`~mmext_init.errors.CheckpointError` naming the entry and the file,
saying what the backbone did, and giving the fixes: the entry on the parent
module (where mmext_init applies every key option), a checkpoint of the
backbone alone, or ``convert_weights=False`` (Swin). A ``prefix`` such a
backbone ignores while it loads is a warning naming it
(:func:`ignored_prefix`); :mod:`.own_loader` predicts what it loads.

Example:
    >>> from mmext_init.loading.options import PretrainedOptions
    >>> load = SelfLoad("init_cfg of 'backbone' (Pretrained)", 'BEiT',
    ...                 'backbone', 'EncoderDecoder',
    ...                 PretrainedOptions('seg.pth', prefix='backbone.'),
    ...                 ['blocks.0.w'], convert_weights=False)
    >>> print(key_error(load, KeyError('backbone.blocks.0.w')))
    ... # doctest: +NORMALIZE_WHITESPACE +ELLIPSIS
    init_cfg of 'backbone' (Pretrained): BEiT.init_weights reads seg.pth
    itself, with its own key handling, and ignores `prefix` (prefix='backbone.'
    is not applied): it looked the key 'backbone.blocks.0.w' up among its own
    tensors, which are named without the leading 'backbone.', and failed with
    KeyError. Fix: move the Pretrained entry to the parent, ...
"""
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch.nn as nn

from ..errors import CheckpointError
from ..loading.key_matching import top_prefixes
from ..loading.options import PretrainedOptions
from ..loading.plan import open_source

_LISTED_KEYS = 8  # a dict with at most this many keys is listed in full


@dataclass
class SelfLoad:
    """One ``Pretrained`` entry that a module's own ``init_weights`` loads."""
    label: str  # the config entry, e.g. "init_cfg of 'backbone' (Pretrained)"
    owner: str  # class whose init_weights loads, e.g. 'BEiT'
    path: str  # module path, '' for the model root
    root_name: str  # class of the model root
    entry: PretrainedOptions
    module_keys: Sequence[str]  # the module's state_dict keys
    convert_weights: bool  # mmdet Swin's flag

    @classmethod
    def of(cls, session: Any, module: nn.Module, owner: str,
           entry: PretrainedOptions) -> 'SelfLoad':
        """The description of ``entry`` on ``module`` in ``session``."""
        path = session.path_of(module)
        return cls(session.label(path, 'Pretrained'), owner, path,
                   session.root_name, entry, list(module.state_dict(
                       keep_vars=True)),
                   bool(getattr(module, 'convert_weights', False)))

    def file_keys(self) -> List[str]:
        """The file's tensor keys (names and shapes only are read)."""
        return open_source(self.entry, self.label).keys()


def is_prefixed_module_key(key: str, module_keys: Sequence[str]) -> bool:
    """Whether ``key`` is a module key behind a leading prefix.

    Example:
        >>> is_prefixed_module_key('backbone.conv.weight', ['conv.weight'])
        True
    """
    keys = set(module_keys)
    parts = key.split('.')
    return any('.'.join(parts[i:]) in keys for i in range(1, len(parts)))


def key_prefix(keys: Sequence[str], module_keys: Sequence[str]) -> str:
    """The leading prefix (one or two components) that turns the most of
    ``keys`` into module keys, '' if none does.

    Example:
        >>> key_prefix(['backbone.conv.weight', 'head.w'], ['conv.weight'])
        'backbone.'
    """
    wanted, best, hits = set(module_keys), '', 0
    for depth in (1, 2):
        for prefix, _ in top_prefixes(keys, depth).most_common(8):
            found = sum(k[len(prefix):] in wanted for k in keys
                        if k.startswith(prefix))
            if found > hits:
                best, hits = prefix, found
    return best


def describe_keys(keys: Sequence[str]) -> str:
    """A dict's keys, listed when few, else a sample and common prefixes.

    Example:
        >>> describe_keys(['meta', 'state_dict'])
        "a dict with keys 'meta', 'state_dict'"
    """
    if len(keys) <= _LISTED_KEYS:
        return 'a dict with keys ' + ', '.join(repr(k) for k in sorted(keys))
    prefixes = ', '.join(f'{p!r} ({n} keys)'
                         for p, n in top_prefixes(keys).most_common(4))
    return (f'{len(keys)} keys such as {keys[0]!r} (most common prefixes: '
            f'{prefixes or "none"})')


def parent_fix(load: SelfLoad, ckpt_prefix: str) -> str:
    """How to put the entry on the parent module: a config to paste."""
    child = load.path.rsplit('.', 1)[-1]
    if not load.path:
        return ('put the Pretrained entry on the module that holds this '
                'backbone, where mmext_init applies prefix and every key '
                'option, and set init_cfg=None on the backbone')
    parent = load.path.rsplit('.', 1)[0] if '.' in load.path else ''
    where = f"'{parent}'" if parent else f'the model root ({load.root_name})'
    options = []
    if ckpt_prefix:
        options.append(f"ignore_keys=[r'(?!{re.escape(ckpt_prefix)}).*']")
    if ckpt_prefix != child + '.':
        options.append(f"revise_keys=[(r'^{re.escape(ckpt_prefix)}', "
                       f"'{child}.')]")
    return (f'move the Pretrained entry to the parent, {where}: '
            f"init_cfg=dict(type='Pretrained', checkpoint="
            f"{load.entry.checkpoint!r}, {', '.join(options)}), and set "
            f"init_cfg=None on '{load.path}' (there mmext_init applies "
            'prefix and every key option)')


def fixes(load: SelfLoad, ckpt_prefix: str, top_level: bool = False) -> str:
    """The ways out, joined into one sentence (``top_level``: the backbone
    was given the file's top level, not its ``state_dict``)."""
    ways = [parent_fix(load, ckpt_prefix)]
    if load.convert_weights:
        ways.append(f"set convert_weights=False on '{load.path}' if the file "
                    "is already in this library's layout (convert_weights="
                    "True converts the original release's keys)")
    else:
        sample = next(iter(load.module_keys), 'conv.weight')
        alone = ('a plain {key: tensor} dict, not wrapped in '
                 "'state_dict', " if top_level else '')
        ways.append(f'give it a checkpoint of the backbone alone ({alone}'
                    f'keys relative to the backbone, such as {sample!r})')
    return 'Fix: ' + '; or '.join(ways) + '.'


def _ignores_prefix(load: SelfLoad) -> str:
    prefix = load.entry.prefix
    setting = f' (prefix={prefix!r} is not applied)' if prefix else ''
    return (f'{load.label}: {load.owner}.init_weights reads '
            f'{load.entry.checkpoint} itself, with its own key handling, and '
            f'ignores `prefix`{setting}')


def ignored_prefix(load: SelfLoad) -> Optional[str]:
    """The warning for an entry whose ``prefix`` the module's own loader
    does not apply (None without a prefix): the load goes on with the
    loader's own key handling, which the ledger reports.

    Example:
        >>> load = SelfLoad("init_cfg of 'backbone' (Pretrained)",
        ...                 'SwinTransformer', 'backbone', 'EncoderDecoder',
        ...                 PretrainedOptions('seg.pth', prefix='bakbone.'),
        ...                 ['patch_embed.projection.weight'], False)
        >>> print(ignored_prefix(load))  # doctest: +NORMALIZE_WHITESPACE
        init_cfg of 'backbone' (Pretrained): SwinTransformer.init_weights
        reads seg.pth itself, with its own key handling, and ignores
        `prefix` (prefix='bakbone.' is not applied). Remove prefix from the
        entry, or move the entry to the parent module, where mmext_init
        applies prefix and every key option.
    """
    if not load.entry.prefix:
        return None
    return (f'{_ignores_prefix(load)}. Remove prefix from the entry, or move '
            'the entry to the parent module, where mmext_init applies prefix '
            'and every key option.')


def nothing_loaded_error(load: SelfLoad, offered: Sequence[Sequence[str]],
                         self_filled: Sequence[str]) -> CheckpointError:
    """The error for an own ``init_weights`` that loaded nothing;
    ``offered``: the keys of each dict it gave ``load_state_dict``,
    ``self_filled``: BatchNorm counters torch filled in by itself."""
    if not offered:
        given = 'it made no load_state_dict call at all'
        keys: Sequence[str] = ()
    else:
        keys = [k for dict_keys in offered for k in dict_keys]
        given = f'it gave load_state_dict {describe_keys(keys)}'
        if 'state_dict' in keys:
            given += " (the file's top level: it does not unwrap 'state_dict')"
        given += ', and none of them names a tensor of the module'
    if self_filled:
        given += (f'; the {len(self_filled)} num_batches_tracked counters '
                  "that BatchNorm fills in itself when a key is absent do "
                  'not count')
    prefix = (key_prefix(load.file_keys(), load.module_keys)
              or load.entry.prefix or '')
    top_level = 'state_dict' in keys
    return CheckpointError(
        f'{_ignores_prefix(load)}: {given}, so it loaded nothing from '
        f'{load.entry.checkpoint}. {fixes(load, prefix, top_level)}')


def key_error(load: SelfLoad, exc: KeyError) -> Optional[CheckpointError]:
    """The error for a ``KeyError`` raised by the own ``init_weights`` on a
    key that is a module key behind a prefix the backbone did not strip
    (``'backbone.layers.0...'``), or None for any other ``KeyError``, which
    then propagates unchanged."""
    key = exc.args[0] if len(exc.args) == 1 else None
    if (not isinstance(key, str) or key in set(load.module_keys)
            or not is_prefixed_module_key(key, load.module_keys)):
        return None
    prefix = key_prefix([key], load.module_keys)
    return CheckpointError(
        f'{_ignores_prefix(load)}: it looked the key {key!r} up among its '
        f'own tensors, which are named without the leading '
        f'{prefix!r}, and failed with KeyError. {fixes(load, prefix)}')


def unmatched_load_error(label: str, source: Any,
                         offered: Sequence[Sequence[str]],
                         module_keys: Sequence[str]) -> CheckpointError:
    """The error for an own ``init_weights`` that loaded a checkpoint named
    by its own arguments (``source``: e.g. its ``pretrained`` attribute) and
    matched none of the module's tensors.

    Example:
        >>> unmatched_load_error("init_cfg of 'backbone' (DetectoRS_ResNet."
        ...                      "init_weights)", 'det.pth',
        ...                      [['backbone.conv1.weight']], ['conv1.weight'])
        CheckpointError(...)
    """
    keys = [k for dict_keys in offered for k in dict_keys]
    prefix = key_prefix(keys, module_keys)
    where = f'{source}' if isinstance(source, str) else 'a state dict'
    hint = (f"; its keys carry the prefix {prefix!r}, which this module "
            "does not strip" if prefix else '')
    return CheckpointError(
        f'{label}: loaded {where} itself (the module keeps the checkpoint '
        'in its own arguments, so no Pretrained entry is left for '
        'mmext_init to apply prefix to) and gave load_state_dict '
        f'{describe_keys(keys)}, none of which names a tensor of the '
        f'module{hint}: nothing was loaded. Fix: give it a checkpoint of '
        'this module alone (keys such as '
        f'{next(iter(module_keys), "conv.weight")!r}), or drop its '
        'checkpoint and put a Pretrained entry on the parent module, where '
        'mmext_init applies prefix and every key option.')
