"""``CopyFrom``: start a new module as a copy of another (pretrained) one.

Registered in MMEngine's root ``WEIGHT_INITIALIZERS``. The source is a module
of the same model (``source='a.b.c'``, a dotted path from the model root) or a
checkpoint sub-tree (``checkpoint=..., prefix=...``). Tensor names must line
up and shapes must match. Inside ``init_weights`` a model-source copy runs
after the checkpoint copy, so it copies the *initialized* source whatever the
order of the ``init_weights`` calls; a tensor that something more specific
wrote after the ``CopyFrom`` was declared (a deeper ``init_cfg``) or that the
checkpoint provides keeps that value, exactly as if the copy had run in
MMEngine's order.

It copies into the whole module it is applied to: the module whose own
``init_cfg`` it is (an entry without ``override``), or the ``name`` of an
``override`` entry (then the module declaring it gets nothing from it, as
for every type). ``layer`` is an error; a module without parameters or
buffers is an error naming the entry.

Example (config):
    >>> init_cfg = dict(type='Constant', val=0, layer='Conv2d',
    ...                 override=dict(type='CopyFrom', name='branch2',
    ...                               source='backbone.layer4'))
"""
import functools
from typing import Dict, Optional

import torch
import torch.nn as nn
from mmengine.registry import WEIGHT_INITIALIZERS

from ..errors import InitConfigError, close_names, module_label
from ..checkpoint.formats import open_checkpoint
from ..provenance.ledger import INITIALIZER, Provenance
from ..context import current_session


def _state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return module.state_dict(keep_vars=True)


def _check_lined_up(target: Dict[str, torch.Tensor],
                    source: Dict[str, torch.Tensor], what: str,
                    owner: str) -> None:
    missing = sorted(set(target) - set(source))
    extra = sorted(set(source) - set(target))
    if missing or extra:
        raise InitConfigError(
            f'CopyFrom into {owner}: tensor names do not line up with '
            f'{what}: only in the target: {missing or "-"}; only in the '
            f'source: {extra or "-"}')
    for name, t in target.items():
        if tuple(t.shape) != tuple(source[name].shape):
            raise InitConfigError(
                f'CopyFrom into {owner}: {name} has shape {tuple(t.shape)} '
                f'but {what} has {tuple(source[name].shape)}')


def copy_from(module: nn.Module, source: nn.Module) -> None:
    """Copy every parameter and persistent buffer of ``source`` into
    ``module`` (names must line up, shapes must match).

    Args:
        module (nn.Module): the module written to.
        source (nn.Module): the module read from.

    Raises:
        InitConfigError: naming both classes and the first name or shape
            that does not line up.

    Example:
        >>> import torch.nn as nn
        >>> new, old = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> copy_from(new, old)
        >>> bool((new.weight == old.weight).all())
        True
    """
    target = _state(module)
    src = _state(source)
    _check_lined_up(target, src, f'source {type(source).__name__}',
                    type(module).__name__)
    with torch.no_grad():
        for name, t in target.items():
            t.copy_(src[name])


def resolve_source(root: nn.Module, path: str, owner: str) -> nn.Module:
    """The module at dotted ``path`` from ``root``, with close names if none."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in root.named_modules() if n]
        close = close_names(path, names)
        hint = f'; did you mean {close}?' if close else ''
        raise InitConfigError(
            f'CopyFrom into {owner}: source {path!r} is not a module of '
            f'{type(root).__name__}{hint}') from None


@WEIGHT_INITIALIZERS.register_module(name='CopyFrom', force=True)
class CopyFromInit:
    """Initialize a module as a copy of another module or checkpoint sub-tree.

    Args:
        source (str, optional): dotted path of the source module from the
            model root (the module ``init_weights`` was called on).
        checkpoint (str, optional): a checkpoint file instead of a module.
        prefix (str, optional): with ``checkpoint``, the key prefix of the
            sub-tree to copy, e.g. ``'backbone.layer4.'``.
        layer: must be unset (a whole module is copied).

    Raises:
        InitConfigError: unless exactly one of ``source``/``checkpoint`` is
            given, for ``layer``, or for an unknown argument.

    Example:
        >>> import torch, torch.nn as nn
        >>> from mmengine.model import BaseModule
        >>> class Net(BaseModule):
        ...     def __init__(self):
        ...         super().__init__(init_cfg=dict(
        ...             type='CopyFrom', source='old', override=dict(name='new')))
        ...         self.old, self.new = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> net = Net()
        >>> net.init_weights()
        >>> torch.equal(net.new.weight, net.old.weight)
        True
    """

    def __init__(self,
                 source: Optional[str] = None,
                 checkpoint: Optional[str] = None,
                 prefix: str = '',
                 layer=None,
                 **unused) -> None:
        if (source is None) == (checkpoint is None):
            raise InitConfigError(
                'CopyFrom needs exactly one of source= or checkpoint=')
        if layer:
            raise InitConfigError(
                'CopyFrom copies a whole module: use it as the module\'s own '
                'init_cfg or in an override, not with layer=')
        if unused:
            raise InitConfigError(
                f'CopyFrom got unexpected arguments {sorted(unused)}')
        self.source = source
        self.checkpoint = checkpoint
        self.prefix = prefix if not prefix or prefix.endswith('.') \
            else prefix + '.'
        self.wholemodule = False

    #: an init_cfg entry without ``override`` copies into the module that
    #: declares it (read by mmext_init's init_cfg driver)
    applies_to_declaring_module = True

    def __call__(self, module: nn.Module) -> None:
        session = current_session()
        owner = module_label(session.path_of(module), session.root_name) \
            if session else type(module).__name__
        if not _state(module):
            raise InitConfigError(
                f'CopyFrom into {owner}: {type(module).__name__} has no '
                'parameters or buffers to copy into; name the module to copy '
                'into with override=dict(name=...)')
        if self.checkpoint is not None:
            self._copy_checkpoint(module, owner)
        elif session is None:
            raise InitConfigError(
                f'CopyFrom into {owner}: source= needs the model root; call '
                'init_weights() on the model')
        else:
            current = session.tracker.current
            declared_by = current.declared_by if current else \
                session.path_of(module)
            if current is not None:
                current.scheduled += len(_state(module))
            session.after_loads.append(
                (functools.partial(self._copy_module, declared_by=declared_by),
                 module, session.tracker.sequence))

    def _copy_checkpoint(self, module: nn.Module, owner: str) -> None:
        label = f'CopyFrom into {owner}'
        tensors = open_checkpoint(self.checkpoint, label=label)
        src = {
            k[len(self.prefix):]: tensors.get(k)
            for k in tensors.keys() if k.startswith(self.prefix)
        }
        target = _state(module)
        _check_lined_up(target, src,
                        f'{self.checkpoint} under {self.prefix!r}', owner)
        with torch.no_grad():
            for name, t in target.items():
                t.copy_(src[name])

    def _copy_module(self, session, module: nn.Module, since: int,
                     declared_by: str) -> None:
        """Run after the checkpoint copy (see the module docstring)."""
        path = session.path_of(module)
        owner = module_label(path, session.root_name)
        source = resolve_source(session.root, self.source, owner)
        target, src = _state(module), _state(source)
        _check_lined_up(target, src, f'source {self.source!r}', owner)
        tracker = session.tracker
        with torch.no_grad():
            for name, t in target.items():
                full = f'{path}.{name}' if path else name
                if (full in tracker.protected
                        or tracker.written_at.get(full, 0) > since):
                    continue
                t.copy_(src[name])
                tracker.record(
                    full,
                    Provenance(INITIALIZER, 'CopyFrom', declared_by,
                               f'{self.source}.{name}',
                               {'source': self.source}))
