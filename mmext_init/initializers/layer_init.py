"""The driver shared by ``Zero``, ``Identity``, ``Orthogonal`` and
``LoRAPair``: which layers an entry reaches, exactly like MMEngine's stock
initializers, plus one rule for an entry with neither ``layer`` nor
``override``.

* ``layer='Conv2d'``: the layers whose class or a direct base class is named
  (``module.apply``, as ``ConstantInit``: stock's ``layer``, the one class
  rule that stops at the direct bases, see :mod:`mmext_init.matching`);
* ``override=dict(name='up')`` (``wholemodule``): every submodule of the
  named one (itself included) that the type can initialize;
* neither (in an ``init_cfg``): the module that declares the entry, like an
  ``override`` naming that module. Stock types keep MMEngine's meaning
  (nothing), and mmext_init's report lists such entries as having
  initialized nothing.

A whole module holding nothing the type can initialize is an error naming
the module and what was looked for. Layers whose parameters the checkpoint
provides are skipped (and counted as skipped work).

Example:
    >>> init_cfg = dict(type='LoRAPair')   # on a module holding lora_A/lora_B
"""
import torch
import torch.nn as nn
from mmengine.model.weight_init import BaseInit, update_init_info

from ..matching import init_layer_names
from ..provenance.tracking import count_skipped_layer, provided_by_checkpoint

__all__ = ['LayerInit', 'describe_module', 'has_weight_or_bias']


def describe_module(module: nn.Module) -> str:
    """``Conv2d(4, 4, kernel_size=(2, 2), stride=(1, 1))`` for messages."""
    return f'{type(module).__name__}({module.extra_repr()})'


def has_weight_or_bias(module: nn.Module) -> bool:
    """Whether ``module`` has a ``weight`` or ``bias`` tensor."""
    return any(
        isinstance(getattr(module, attr, None), torch.Tensor)
        for attr in ('weight', 'bias'))


class LayerInit(BaseInit):
    """Apply :meth:`init_layer` to the layers an entry reaches (see the
    module docstring). Subclasses set ``type_name`` (the registered name) and
    ``nothing`` (the end of the error for a module holding no target)."""

    #: an init_cfg entry without ``layer``/``override`` applies to the
    #: module that declares it (read by mmext_init's init_cfg driver)
    applies_to_declaring_module = True
    type_name = 'LayerInit'
    nothing = 'holds nothing this type initializes'

    def targets(self, m: nn.Module) -> bool:
        """Whether a whole-module entry initializes ``m``."""
        return True

    def init_layer(self, m: nn.Module) -> None:
        raise NotImplementedError

    def nothing_error(self, module: nn.Module) -> ValueError:
        """The error for a whole module holding no target."""
        return ValueError(
            f'{self.type_name}: {describe_module(module)} {self.nothing}')

    def _get_init_info(self) -> str:
        return f'{type(self).__name__}: bias={self.bias}'

    def _matches(self, m: nn.Module) -> bool:
        return bool(init_layer_names(m) & set(self.layer))

    def __call__(self, module: nn.Module) -> None:
        found = []

        def init(m: nn.Module) -> None:
            if self.targets(m) if self.wholemodule else self._matches(m):
                found.append(m)
                if provided_by_checkpoint(m):
                    count_skipped_layer()
                else:
                    self.init_layer(m)

        module.apply(init)
        if self.wholemodule and not found:
            raise self.nothing_error(module)
        if hasattr(module, '_params_init_info'):  # stock init_weights' log
            update_init_info(module, init_info=self._get_init_info())
