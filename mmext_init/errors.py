"""Exceptions raised by mmext_init. Every message names the file and the
config entry at fault, so a user can fix the config without a debugger."""


class InitConfigError(ValueError):
    """An ``init_cfg`` entry is wrong (unknown layer name, bad override path,
    unknown key, contract violated such as ``strict`` or ``min_loaded``)."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, corrupt, empty, non-finite values,
    or holding objects that were not reconstructed because they could run code."""


class NonFiniteTensorError(CheckpointError):
    """A checkpoint tensor holds NaN or Inf (``check_finite``); ``target`` is
    the model tensor it was already copied into, if any."""

    def __init__(self, message: str, target=None) -> None:
        super().__init__(message)
        self.target = target


def entry_label(module_path: str, root_name: str, cfg_type: str) -> str:
    """Human label of an ``init_cfg`` entry, e.g. ``init_cfg of 'backbone' (Pretrained)``.

    Example:
        >>> entry_label('backbone', 'RetinaNet', 'Pretrained')
        "init_cfg of 'backbone' (Pretrained)"
        >>> entry_label('', 'RetinaNet', 'Kaiming')
        'init_cfg of the model root RetinaNet (Kaiming)'
    """
    where = f"'{module_path}'" if module_path else f'the model root {root_name}'
    return f'init_cfg of {where} ({cfg_type})'
