r"""``DoRA`` (Liu et al. 2024, "Weight-Decomposed Low-Rank Adaptation"): LoRA
whose weight update is split into a direction and a learned magnitude per
output channel, on a ``nn.Linear``, ``nn.Conv2d`` (``groups=1``) or mmcv
``ConvModule`` (its ``conv``), as HF PEFT's ``use_dora=True``:

.. math::
    y = \frac{m}{\lVert W + s\,BA \rVert_c}\,(W + s\,BA)\,x + b

with :math:`\lVert\cdot\rVert_c` the L2 norm of each output channel's row
(all input channels and kernel taps of a conv filter), treated as a constant
for the gradient (the paper's section 4.3, as PEFT does).

The target gets LoRA's ``lora_A``, ``lora_B``, ``lora_dropout`` and
``lora_scale`` (:class:`~mmext_init.inserting.methods.lora.LoRA`'s arguments,
``rank``/``alpha``/``dropout``/``use_rslora``) and ``lora_magnitude_vector``
(:class:`DoRAMagnitudeVector`): PEFT's state dict names without
``base_layer.`` and ``.default``, so its checkpoints map one to one (its
``weight`` has shape (out,), (1, out, 1, 1) for a conv, as PEFT's).

The magnitude declares the init type ``DoRAMagnitude``
(:class:`DoRAMagnitudeInit`): the norm of :math:`W + s\,BA` of the target
*after the checkpoints load*, so with a ``Pretrained`` base it is the norm of
the loaded weight (and with B zero the model's function is unchanged); a
checkpoint or delta that holds the magnitude loads it instead. Not covered:
a weight loaded later by the Runner (``load_from``, see
:class:`DoRAMagnitudeInit`).

Example:
    >>> import torch, torch.nn as nn
    >>> from mmengine.model import BaseModule
    >>> class Net(BaseModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(6, 4)
    >>> net = Net()
    >>> DoRA(rank=2, alpha=4).insert(net.fc, 'fc')
    ['lora_A', 'lora_B', 'lora_dropout', 'lora_magnitude_vector']
    >>> net.init_weights()
    >>> x = torch.randn(3, 6)
    >>> torch.equal(net.fc(x), nn.functional.linear(x, net.fc.weight,
    ...                                             net.fc.bias))
    True
    >>> torch.equal(net.fc.lora_magnitude_vector.weight,
    ...             torch.linalg.norm(net.fc.weight, dim=1))
    True
"""
import functools
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import WEIGHT_INITIALIZERS

from ...context import current_session
from ...deferred import is_pending
from ...errors import InitConfigError
from ...provenance.ledger import INITIALIZER, Provenance
from ...session.runner_load import load_of_model, plan_runner_load
from .lora import LoRA, lora_delta, lora_layer
from ..registry import INSERT_TYPES, child_name_free, is_switched_off

__all__ = ['DoRA', 'DoRAMagnitudeVector', 'DoRAMagnitudeInit',
           'dora_forward_hook', 'dora_weight_norm', 'dora_lora_weight',
           'MAGNITUDE']

#: the child holding the magnitude (PEFT's name without ``.default``)
MAGNITUDE = 'lora_magnitude_vector'

_PLANNED: list = [None, {}]  # the Runner load last planned, its copies


def dora_lora_weight(layer: nn.Module) -> torch.Tensor:
    """:math:`BA` of a DoRA'd ``nn.Linear``/``nn.Conv2d`` in its weight's
    shape, computed as PEFT's DoRA forward computes it (for a Linear, B(A(I))
    transposed), so the norms agree bit for bit.

    Example:
        >>> fc = nn.Linear(3, 2)
        >>> _ = DoRA(rank=1).insert(fc, 'fc')
        >>> dora_lora_weight(fc).shape
        torch.Size([2, 3])
    """
    a, b = layer.lora_A, layer.lora_B
    if a.weight.dim() == 2:
        eye = torch.eye(a.weight.shape[1], device=a.weight.device,
                        dtype=a.weight.dtype)
        return b(a(eye)).T
    rank = a.weight.shape[0]
    return torch.mm(b.weight.view(-1, rank),
                    a.weight.view(rank, -1)).reshape(layer.weight.shape)


def dora_weight_norm(layer: nn.Module,
                     lora_weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each output channel of ``weight + lora_scale *
    lora_weight``, PEFT's reduction and shape: (out,) for a Linear, (1, out,
    1, 1) for a Conv2d.

    Example:
        >>> conv = nn.Conv2d(2, 3, 3)
        >>> _ = DoRA(rank=1).insert(conv, 'conv')
        >>> dora_weight_norm(conv, dora_lora_weight(conv)).shape
        torch.Size([1, 3, 1, 1])
    """
    weight = layer.weight + layer.lora_scale * lora_weight
    if weight.dim() == 2:
        return torch.linalg.norm(weight, dim=1).to(weight.dtype)
    dims = tuple(range(1, weight.dim()))
    return weight.norm(p=2, dim=dims, keepdim=True).transpose(1, 0)


class DoRAMagnitudeVector(BaseModule):
    """DoRA's magnitude :math:`m`: ``weight`` of shape (out,), or (1, out,
    1, 1) for a conv target. Declared init: ``DoRAMagnitude`` (the norm of
    the target's weight plus its LoRA update, after loading). The
    constructor gives that norm of ``weight`` (with B zero), or ones while
    the weight is pending under deferred init (``init_weights`` fills it).

    Example:
        >>> w = torch.tensor([[3., 4.], [0., 2.]])
        >>> DoRAMagnitudeVector(w).weight.data
        tensor([5., 2.])
    """

    def __init__(self, weight: torch.Tensor,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg or dict(type='DoRAMagnitude'))
        out = weight.shape[0]
        shape = (out, ) if weight.dim() == 2 else (1, out, 1, 1)
        value = torch.ones(shape, dtype=weight.dtype, device=weight.device)
        if not is_pending(weight):
            with torch.no_grad():
                dims = tuple(range(1, weight.dim()))
                value = torch.linalg.norm(weight, dim=1) if weight.dim() == 2 \
                    else weight.norm(p=2, dim=dims, keepdim=True).transpose(
                        1, 0)
        self.weight = nn.Parameter(value.detach().clone())


def dora_forward_hook(module: nn.Module, args: Tuple,
                      output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a DoRA target, PEFT's DoRA forward: ``output + (m/n -
    1) * base + m/n * B(A(x)) * s`` with ``n`` the detached norm, ``base``
    the output without bias (or, while dropout is active, ``W`` applied to
    the dropped input ``x``); everything read from ``module``; ``output``
    as it is while the insert set is switched off."""
    if is_switched_off(module.lora_A):
        return output
    x, weight = args[0], module.weight
    dropout = module.lora_dropout
    if isinstance(dropout, nn.Identity) or not module.training:
        base = output
        if module.bias is not None:
            shape = (-1, ) if weight.dim() == 2 else \
                (1, -1) + (1, ) * (output.dim() - 2)
            base = output - module.bias.view(*shape)
    else:
        x = dropout(x)
        base = F.linear(x, weight) if weight.dim() == 2 else \
            module._conv_forward(x, weight, None)
    lora_weight = dora_lora_weight(module).to(x.dtype)
    norm = dora_weight_norm(module, lora_weight.detach()).detach()
    scale = module.lora_magnitude_vector.weight / norm
    if weight.dim() == 2:
        scale = scale.view(1, -1)
    lora = module.lora_B(module.lora_A(x))
    return output + ((scale - 1) * base + scale * lora * module.lora_scale)


@WEIGHT_INITIALIZERS.register_module(name='DoRAMagnitude', force=True)
class DoRAMagnitudeInit:
    """Init type ``DoRAMagnitude`` of :class:`DoRAMagnitudeVector`: sets each
    magnitude under the module it is applied to to the norm
    (:func:`dora_weight_norm`) of the DoRA target holding it, computed after
    the checkpoint copy of ``init_weights()`` (so from the loaded weight and
    A, B), unless a checkpoint provides the magnitude or a deeper
    declaration wrote it. A weight the Runner loads afterwards
    (``load_from``, ``resume``) is not seen: a checkpoint for ``load_from``
    must hold the magnitudes too, else give the base weights through
    ``Pretrained``.

    Raises:
        InitConfigError: with ``layer``, an unknown argument, no magnitude
            under the module, or outside a model's ``init_weights()``.
    """

    #: an init_cfg entry without ``override`` applies to its own module
    applies_to_declaring_module = True

    def __init__(self, layer=None, **unused) -> None:
        if layer or unused:
            raise InitConfigError(
                'DoRAMagnitude takes no arguments (applied to the '
                f'DoRAMagnitudeVector declaring it), got '
                f'{sorted(unused) + (["layer"] if layer else [])}')
        self.wholemodule = False

    def __call__(self, module: nn.Module) -> None:
        vectors = [m for m in module.modules()
                   if isinstance(m, DoRAMagnitudeVector)]
        if not vectors:
            raise InitConfigError(
                f'DoRAMagnitude: {type(module).__name__} holds no '
                'DoRAMagnitudeVector (it initializes DoRA magnitudes)')
        session = current_session()
        if session is None:
            raise InitConfigError(
                'DoRAMagnitude reads the weight of the DoRA target holding '
                'the magnitude: call init_weights() on the model')
        current = session.tracker.current
        declared_by = current.declared_by if current else \
            session.path_of(module)
        for vector in vectors:
            if current is not None:
                current.scheduled += 1
            session.after_loads.append(
                (functools.partial(fill_magnitude, declared_by=declared_by),
                 vector, session.tracker.sequence))


def fill_magnitude(session, vector: DoRAMagnitudeVector, since: int,
                   declared_by: str) -> None:
    """The after-load job of ``DoRAMagnitude``: ``vector.weight`` = the norm
    of its target (skipped if a checkpoint provides it, or something wrote
    it after the declaration ran at sequence ``since``)."""
    path = session.path_of(vector)
    name = f'{path}.weight'
    tracker = session.tracker
    if name in tracker.protected or tracker.written_at.get(name, 0) > since:
        return
    parent, _, child = path.rpartition('.')
    if child != MAGNITUDE or not parent:
        where = repr(path) if path else 'the root'
        raise InitConfigError(
            f'DoRAMagnitude: the magnitude at {where} of the '
            f'{type(session.root).__name__} initialized is not the '
            f'{MAGNITUDE} of a DoRA target in it: call init_weights() on the '
            'model holding the target')
    check_runner_load(session.root, parent)
    layer = session.root.get_submodule(parent)
    with torch.no_grad():
        vector.weight.copy_(dora_weight_norm(layer, dora_lora_weight(layer)))
    tracker.record(name, Provenance(
        INITIALIZER, 'DoRAMagnitude', declared_by,
        notes=('the norm of the loaded weight + s*BA', )))


def check_runner_load(root: nn.Module, target: str) -> None:
    """Raise ``InitConfigError`` if the Runner will load ``target``'s
    weight after ``init_weights()`` (``load_from``) without its magnitude:
    the magnitude, computed now, would not be the loaded weight's norm."""
    follows = load_of_model(root)
    if follows is None or follows.done:
        return
    if _PLANNED[0] is not follows:  # one plan per Runner load
        _PLANNED[:] = [follows, plan_runner_load(root, follows.load).copies]
    copies = _PLANNED[1]
    weight, magnitude = f'{target}.weight', f'{target}.{MAGNITUDE}.weight'
    if weight in copies and magnitude not in copies:
        raise InitConfigError(
            f'DoRA at {target!r}: {follows.load.label} loads {weight} after '
            f'init_weights() set {magnitude} from the weight it replaces '
            '(DoRAMagnitude); give that checkpoint through the model\'s '
            "init_cfg=dict(type='Pretrained', checkpoint=...) instead, or "
            'load_from a checkpoint that holds the magnitudes')


@INSERT_TYPES.register_module()
class DoRA(LoRA):
    """A DoRA branch on each target (see the module docstring).

    Args:
        rank (int): r >= 1.
        alpha (float, optional): the scale is ``alpha / rank``; defaults to
            ``rank`` (scale 1).
        dropout (float): dropout on the branch's input (PEFT's placement:
            while it is active, the base term uses the dropped input too).
            Defaults to 0.
        use_rslora (bool): rsLoRA's scale ``alpha / sqrt(rank)`` (PEFT's
            name). Defaults to False.

    Example:
        >>> conv = nn.Conv2d(3, 4, 3, padding=1)
        >>> _ = DoRA(rank=2).insert(conv, 'conv')
        >>> sorted(conv.state_dict())[1:4]
        ['lora_A.weight', 'lora_B.weight', 'lora_magnitude_vector.weight']
    """

    foldable = True
    forward_hook = staticmethod(dora_forward_hook)

    def __init__(self,
                 rank: int,
                 alpha: Optional[float] = None,
                 dropout: float = 0.0,
                 use_rslora: bool = False) -> None:
        super().__init__(rank, alpha, dropout, use_rslora)

    def check(self, target: nn.Module, path: str) -> None:
        layer = lora_layer(target)
        where = f'{path!r} ({type(target).__name__})'
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ValueError(
                f'DoRA: {where} is not a supported layer: DoRA applies to '
                'nn.Linear, nn.Conv2d and mmcv ConvModule')
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise ValueError(f'DoRA: {where} has groups={layer.groups}; DoRA '
                             'applies to convolutions with groups=1')
        super().check(target, path)
        child_name_free(layer, MAGNITUDE, path)

    def insert(self, target: nn.Module, path: str) -> List[str]:
        self.check(target, path)
        children = super().insert(target, path)
        layer = lora_layer(target)
        layer.add_module(MAGNITUDE, DoRAMagnitudeVector(layer.weight))
        prefix = '' if layer is target else 'conv.'
        return children + [prefix + MAGNITUDE]

    def fold(self, target: nn.Module,
             path: str) -> Dict[str, Optional[torch.Tensor]]:
        """``m / n * (weight + s*BA)`` per output channel, ``n`` the norm of
        ``weight + s*BA`` (PEFT's merge); A, B and the magnitude dropped.

        Example:
            >>> fc = nn.Linear(4, 3).double()
            >>> dora = DoRA(rank=2)
            >>> _ = dora.insert(fc, 'fc')
            >>> with torch.no_grad():
            ...     _ = fc.lora_magnitude_vector.weight.mul_(2)
            >>> torch.allclose(dora.fold(fc, 'fc')['weight'], 2 * fc.weight)
            True
        """
        layer = lora_layer(target)
        prefix = '' if layer is target else 'conv.'
        weight = layer.weight + lora_delta(layer)
        dims = tuple(range(1, weight.dim()))
        norm = weight.norm(p=2, dim=dims, keepdim=True)
        magnitude = layer.lora_magnitude_vector.weight.reshape(norm.shape)
        return {prefix + 'weight': magnitude / norm * weight,
                **{prefix + n: None for n in (
                    'lora_A.weight', 'lora_B.weight',
                    f'{MAGNITUDE}.weight')}}
