"""The options of one ``Pretrained`` entry, checked when it is built.

:class:`PretrainedOptions` is what the loading layer plans and copies from;
:class:`mmext_init.PretrainedInit` (the registered ``Pretrained`` type) adds
the call MMEngine makes when the entry is applied directly.

Example:
    >>> opts = PretrainedOptions('r50.pth', prefix='backbone.', min_loaded=0.9)
    >>> opts.mapping.prefix, opts.min_loaded, opts.ignored_by_own_loader()
    ('backbone.', 0.9, [])
    >>> PretrainedOptions('r50.pth', on_missing='sometimes')
    Traceback (most recent call last):
    ...
    mmext_init.errors.InitConfigError: Pretrained: on_missing must be one of ('warn', 'error', 'ignore'), got 'sometimes'
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from mmengine.model.weight_init import PretrainedInit as StockPretrained

from ..checkpoint.converters import get_converter
from ..checkpoint.stacked import stack_label
from ..errors import InitConfigError, InitConfigTypeError
from .adapt import AdaptTransform, build_transform
from .key_matching import KeyMapping

ON_MISSING = ('warn', 'error', 'ignore')
_CHOICES = {'on_missing': ON_MISSING, 'on_mismatch': ('warn', 'error'),
            'match': ('exact', 'suffix')}


def as_cfg_list(init_cfg: Any) -> List[Dict[str, Any]]:
    """``init_cfg`` (None, dict or list of dicts) as a list of dicts.

    Example:
        >>> as_cfg_list(dict(type='Zero'))
        [{'type': 'Zero'}]
    """
    if not init_cfg:
        return []
    if isinstance(init_cfg, dict):
        return [init_cfg]
    if isinstance(init_cfg, (list, tuple)):
        for cfg in init_cfg:
            if not isinstance(cfg, dict):
                raise InitConfigTypeError(
                    f'init_cfg entries must be dicts, got {cfg!r}')
        return list(init_cfg)
    raise InitConfigTypeError(
        f'init_cfg must be a dict or a list of dicts, got {type(init_cfg)}')


def checkpoint_files(checkpoint: Any) -> Tuple[str, ...]:
    """The checkpoint files of an entry: one path, or a non-empty list of
    paths (a base, then deltas trained on it; later files win per key).

    Example:
        >>> checkpoint_files(['r18.pth', 'delta_iter_8.pth'])
        ('r18.pth', 'delta_iter_8.pth')
        >>> checkpoint_files(['r18.pth', None])
        Traceback (most recent call last):
        ...
        mmext_init.errors.InitConfigError: Pretrained: checkpoint must be a path or a non-empty list of paths (a base, then deltas trained on it), got ['r18.pth', None]
    """
    if isinstance(checkpoint, (list, tuple)):
        if checkpoint and all(isinstance(c, str) and c for c in checkpoint):
            return tuple(checkpoint)
        raise InitConfigError(
            'Pretrained: checkpoint must be a path or a non-empty list of '
            'paths (a base, then deltas trained on it), got '
            f'{checkpoint!r}')
    if not isinstance(checkpoint, str) or not checkpoint:
        raise InitConfigError(
            f'Pretrained: checkpoint must be a path, got {checkpoint!r}')
    return (checkpoint, )


def check_choices(**given: Any) -> None:
    """Each of ``given`` (``on_missing``, ``on_mismatch``, ``match``) is one
    of its allowed values."""
    for key, value in given.items():
        if value not in _CHOICES[key]:
            allowed = _CHOICES[key]
            choices = (f'one of {allowed}' if len(allowed) > 2 else
                       ' or '.join(repr(a) for a in allowed))
            raise InitConfigError(
                f'Pretrained: {key} must be {choices}, got {value!r}')


def key_mapping(prefix: Optional[str], revise_keys: Any, ignore_keys: Any,
                key_map: Any, match: str) -> KeyMapping:
    """The entry's key options as one :class:`KeyMapping`, checked."""
    if key_map is not None and not isinstance(key_map, dict):
        raise InitConfigError(
            f'Pretrained: key_map must be a dict, got {key_map!r}')
    if isinstance(ignore_keys, str):
        ignore_keys = [ignore_keys]
    try:
        pairs = tuple((str(p), str(r)) for p, r in revise_keys)
    except (TypeError, ValueError) as exc:
        raise InitConfigError(
            'Pretrained: revise_keys must be a list of (regex, '
            f'replacement) pairs, got {revise_keys!r}') from exc
    return KeyMapping(prefix, pairs, tuple(ignore_keys),
                      tuple((key_map or {}).items()), match)


def build_transforms(adapt: Optional[Sequence[Dict[str, Any]]]
                     ) -> List[AdaptTransform]:
    """The ``adapt`` entries as transforms, with errors naming the key."""
    try:
        return [build_transform(cfg) for cfg in (adapt or [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise InitConfigError(f'Pretrained: adapt: {exc}') from exc


class PretrainedOptions:
    """The checked options of one ``Pretrained`` entry (their meaning:
    :class:`mmext_init.PretrainedInit`)."""

    def __init__(self,
                 checkpoint: Union[str, Sequence[str]],
                 prefix: Optional[str] = None,
                 map_location: Any = 'cpu',
                 init_missing: Any = None,
                 on_missing: str = 'warn',
                 strict: bool = False,
                 revise_keys: Sequence[Sequence[str]] = (),
                 ignore_keys: Sequence[str] = (),
                 min_loaded: Optional[float] = None,
                 trust_checkpoint: bool = False,
                 check_finite: bool = True,
                 key_map: Optional[Dict[str, str]] = None,
                 on_mismatch: str = 'warn',
                 use_ema: bool = False,
                 match: str = 'exact',
                 adapt: Optional[Sequence[Dict[str, Any]]] = None,
                 converter: Optional[str] = None) -> None:
        self.checkpoints = checkpoint_files(checkpoint)
        check_choices(on_missing=on_missing, on_mismatch=on_mismatch,
                      match=match)
        if min_loaded is not None and not 0 <= float(min_loaded) <= 1:
            raise InitConfigError(
                f'Pretrained: min_loaded must be in [0, 1], got {min_loaded!r}')
        try:
            self.converter = get_converter(converter) if converter else None
        except KeyError as exc:
            raise InitConfigError(f'Pretrained: {exc.args[0]}') from exc
        # one path, or the files of a stack as one name ('a.pth + b.pth')
        self.checkpoint = stack_label(self.checkpoints)
        self.prefix = prefix
        self.map_location = map_location
        self.init_missing = as_cfg_list(init_missing)
        self.on_missing, self.on_mismatch = on_missing, on_mismatch
        self.strict = bool(strict)
        self.mapping = key_mapping(prefix, revise_keys, ignore_keys, key_map,
                                   match)
        self.use_ema = bool(use_ema)
        self.adapt = build_transforms(adapt)
        self.min_loaded = None if min_loaded is None else float(min_loaded)
        self.trust_checkpoint = bool(trust_checkpoint)
        self.check_finite = bool(check_finite)
        self.wholemodule = False  # set by MMEngine's driver; unused here

    def ignored_by_own_loader(self) -> List[str]:
        """Options that a module loading the checkpoint in its own
        ``init_weights`` (mmdet Swin, mmseg ViT) cannot honour."""
        set_ = {'converter': self.converter is not None,
                'adapt': bool(self.adapt),
                'key_map': bool(self.mapping.key_map),
                'revise_keys': bool(self.mapping.revise_keys),
                'ignore_keys': bool(self.mapping.ignore_keys),
                'use_ema': self.use_ema,
                'a list of checkpoints (a base, then deltas)':
                len(self.checkpoints) > 1,
                f'match={self.mapping.match!r}': self.mapping.match != 'exact'}
        return [option for option, is_set in set_.items() if is_set]


def is_pretrained_cfg(cfg: Dict[str, Any]) -> bool:
    """Whether an init cfg entry is a ``Pretrained`` one (by name, or given
    as the class: ours, a subclass of it, or MMEngine's).

    Example:
        >>> is_pretrained_cfg(dict(type='Pretrained', checkpoint='a.pth'))
        True
    """
    t = cfg.get('type')
    return t == 'Pretrained' or (isinstance(t, type) and issubclass(
        t, (PretrainedOptions, StockPretrained)))


def build_options(cfg: Dict[str, Any], label: str) -> PretrainedOptions:
    """The entry's options, with an error that names the config entry.

    Example:
        >>> build_options(dict(type='Pretrained', checkpoint='a.pth',
        ...                    strict=True), 'init_cfg').strict
        True
    """
    args = {k: v for k, v in cfg.items() if k != 'type'}
    try:
        return PretrainedOptions(**args)
    except (InitConfigError, TypeError) as exc:
        raise InitConfigError(f'{label}: {exc}') from exc
