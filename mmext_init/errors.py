"""Exceptions raised by mmext_init. Every message names the file and the
config entry at fault, so a user can fix the config without a debugger."""
import difflib
from typing import Any, Dict, Iterable, Optional, Tuple
from urllib.error import URLError


class InitConfigError(ValueError):
    """An ``init_cfg`` entry is wrong (unknown layer name, bad override path,
    unknown key, contract violated such as ``strict`` or ``min_loaded``).

    Example:
        >>> from mmext_init import CopyFromInit
        >>> CopyFromInit()
        Traceback (most recent call last):
        ...
        mmext_init.errors.InitConfigError: CopyFrom needs exactly one of source= or checkpoint=
    """


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, corrupt, empty, non-finite values,
    or holding objects that were not reconstructed because they could run code.

    Example:
        >>> from mmext_init import read_checkpoint
        >>> try:
        ...     read_checkpoint('/nonexistent/r50.pth', label='Pretrained')
        ... except CheckpointError as exc:
        ...     print(exc)
        Pretrained: checkpoint file not found: /nonexistent/r50.pth
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist: a ``FileNotFoundError`` too, as
    stock MMEngine raises.

    Example:
        >>> isinstance(CheckpointNotFoundError('x.pth'), FileNotFoundError)
        True
    """

    def __str__(self) -> str:
        return Exception.__str__(self)


class CheckpointDownloadError(CheckpointError, URLError):
    """A checkpoint URL could not be downloaded into its cache file: a
    ``URLError`` too, as torch's downloader raises in stock MMEngine.

    Example:
        >>> str(CheckpointDownloadError('cannot download x'))
        'cannot download x'
    """

    def __init__(self, message: str) -> None:
        URLError.__init__(self, message)

    def __str__(self) -> str:
        return str(self.reason)


class CheckpointNameError(CheckpointError, KeyError):
    """A scheme name (``open-mmlab://x``, ``torchvision://x``) is not in
    MMEngine's table of that scheme: a ``KeyError`` too, as in stock.

    Example:
        >>> str(CheckpointNameError("'x' is not a name"))
        "'x' is not a name"
    """

    def __str__(self) -> str:
        return Exception.__str__(self)


class InitConfigTypeError(InitConfigError, TypeError):
    """An ``init_cfg`` (or ``override``) of the wrong type: a ``TypeError``
    too, as stock MMEngine raises.

    Example:
        >>> isinstance(InitConfigTypeError('init_cfg=123'), TypeError)
        True
    """


class NonFiniteTensorError(CheckpointError):
    """A checkpoint tensor holds NaN or Inf (``check_finite``); ``spoiled``
    are the model tensors the load already wrote (checked while copied),
    which the session gives their constructor init back."""

    def __init__(self, message: str, spoiled: tuple = ()) -> None:
        super().__init__(message)
        self.spoiled = tuple(spoiled)


def module_label(module_path: str, root_name: str) -> str:
    """A module as messages name it: its quoted path, or the model root.

    Example:
        >>> module_label('backbone', 'FasterRCNN')
        "'backbone'"
        >>> module_label('', 'FasterRCNN')
        'the model root (FasterRCNN)'
    """
    return f"'{module_path}'" if module_path else \
        f'the model root ({root_name})'


def entry_label(module_path: str,
                root_name: str,
                cfg_type: str,
                field: str = 'init_cfg',
                within: Optional[str] = None) -> str:
    """Human label of an ``init_cfg`` entry, e.g. ``init_cfg of 'backbone' (Pretrained)``.

    ``field`` names the config key holding the entry (``'init_missing'`` for
    the entries of a ``Pretrained``'s ``init_missing``, then ``within`` names
    that ``Pretrained`` entry's checkpoint).

    Example:
        >>> entry_label('backbone', 'RetinaNet', 'Pretrained')
        "init_cfg of 'backbone' (Pretrained)"
        >>> entry_label('', 'RetinaNet', 'Kaiming')
        'init_cfg of the model root (RetinaNet) (Kaiming)'
        >>> entry_label('backbone', 'RetinaNet', 'Kaiming', 'init_missing', 'r18.pth')
        "init_missing of 'backbone' (Kaiming), in init_cfg of 'backbone' (Pretrained) for r18.pth"
    """
    label = f'{field} of {module_label(module_path, root_name)} ({cfg_type})'
    if within is not None:
        owner = entry_label(module_path, root_name, 'Pretrained')
        label += f', in {owner} for {within}'
    return label


def close_names(word: str, options: Iterable[str]) -> str:
    """The options a misspelt ``word`` may have meant, quoted and joined by
    'or' ('' if none): one differing only in case, else up to three close
    ones.

    Example:
        >>> close_names('Conv2D', ['Conv2d', 'Linear'])
        "'Conv2d'"
        >>> close_names('neck', ['backbone', 'necks', 'head'])
        "'necks'"
    """
    options = list(options)
    lowered = {o.lower(): o for o in options}
    if word.lower() in lowered:
        return repr(lowered[word.lower()])
    found = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    return ' or '.join(repr(f) for f in found)


#: (what, former name) -> (its name now, why): a former name is an error
#: naming the new one, never an alias
RENAMED: Dict[Tuple[str, str], Tuple[str, str]] = {
    ('init type', 'LoRA'): (
        'LoRAPair', "'LoRA' is the insert type of a model's "
        "insert=[dict(type='LoRA', ...)]"),
    ('converter', 'timm_vit'): ('TimmViT', 'registered names are CamelCase'),
    ('converter', 'timm_vit_mmpretrain'): (
        'TimmViTMMPretrain', 'registered names are CamelCase'),
    ('converter', 'swin_official'): (
        'SwinOfficial', 'registered names are CamelCase'),
}


def renamed(what: str, name: Any) -> str:
    """The sentence for a ``what`` given by its former name ('' if ``name``
    is none).

    Example:
        >>> renamed('converter', 'timm_vit')
        "converter 'timm_vit' is now named 'TimmViT' (registered names are CamelCase)"
        >>> renamed('converter', 'TimmViT')
        ''
    """
    found = RENAMED.get((what, name)) if isinstance(name, str) else None
    if found is None:
        return ''
    return f'{what} {name!r} is now named {found[0]!r} ({found[1]})'
