"""Initializers for inserted modules that keep the pretrained function at
step 0: ``Zero``, ``Identity``, ``Orthogonal``, ``LoRAPair``, registered in
MMEngine's *root* ``WEIGHT_INITIALIZERS`` (any ``default_scope``) with the
stock ``layer``/``override``/``bias``/``bias_prob`` conventions, and as
functions next to ``constant_init``: :func:`zero_init`,
:func:`identity_init`, :func:`orthogonal_init`, :func:`lora_pair_init`.
(``LoRAPair`` initializes the two projections of a LoRA module a model
defines itself; the ``LoRA`` of ``insert=[...]`` declares its own init.)
An entry with neither ``layer`` nor ``override`` applies to the module that
declares it (see :mod:`mmext_init.layer_init`).

Example:
    >>> init_cfg = [dict(type='Kaiming', layer='Conv2d'),
    ...             dict(type='Zero', override=dict(name='up'))]
"""
import math

import torch
import torch.nn as nn
from mmengine.registry import WEIGHT_INITIALIZERS

from .layer_init import LayerInit, describe_module, has_weight_or_bias
from ..provenance.tracking import add_note

__all__ = [
    'zero_init', 'identity_init', 'orthogonal_init', 'lora_pair_init',
    'ZeroInit', 'IdentityInit', 'OrthogonalInit', 'LoRAPairInit'
]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _fill(module: nn.Module, name: str, value: float) -> None:
    tensor = getattr(module, name, None)
    if isinstance(tensor, torch.Tensor):
        nn.init.constant_(tensor, value)


def zero_init(module: nn.Module, bias: float = 0) -> None:
    r"""Fill ``module.weight`` with 0 and ``module.bias`` with ``bias``.

    Args:
        module (nn.Module): e.g. the last layer of a residual branch, which
            then adds nothing at step 0 (no ``weight``/``bias``: untouched).
        bias (float): the bias value. Defaults to 0.

    Example:
        >>> up = nn.Conv2d(16, 64, 1)
        >>> zero_init(up)
        >>> torch.count_nonzero(up(torch.randn(1, 16, 4, 4))).item()
        0
    """
    _fill(module, 'weight', 0)
    _fill(module, 'bias', bias)


def _check_conv_identity(conv: nn.Module) -> None:
    """Raise unless ``conv`` (zero padding aside) can map x to x exactly."""
    what = f'Identity: {describe_module(conv)}'
    if any(k % 2 == 0 for k in conv.kernel_size):
        raise ValueError(f'{what} has an even kernel size '
                         f'{tuple(conv.kernel_size)}: no centre tap')
    if any(s != 1 for s in conv.stride):
        raise ValueError(f'{what} has stride {tuple(conv.stride)}: an '
                         'identity needs stride 1')
    padding = conv.padding
    if padding == 'same':
        return
    if padding == 'valid':
        padding = (0, ) * len(conv.kernel_size)
    for k, d, p in zip(conv.kernel_size, conv.dilation, padding):
        if p != d * (k // 2):
            raise ValueError(
                f'{what} has padding {conv.padding!r} for kernel '
                f'{tuple(conv.kernel_size)} and dilation '
                f'{tuple(conv.dilation)}: the output would be shifted or '
                f'resized (the identity needs padding dilation*(k//2))')


def identity_init(module: nn.Module, bias: float = 0) -> None:
    r"""Make a Linear or Conv1d/2d/3d layer the identity map, :math:`y = x`.

    Linear: :func:`torch.nn.init.eye_`; convolution:
    :func:`torch.nn.init.dirac_` per group (at the kernel centre). Output and
    input sizes (per group) that differ get the overlapping identity, zeros
    elsewhere, and a note in the provenance ledger.

    Args:
        module (nn.Module): the layer, e.g. one inserted in series.
        bias (float): the bias value. Defaults to 0.

    Raises:
        ValueError: naming the layer, for a layer that is neither Linear nor
            Conv1d/2d/3d, or a convolution whose even kernel, stride or
            padding cannot give the identity.

    Example:
        >>> conv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        >>> identity_init(conv)
        >>> x = torch.randn(1, 8, 5, 5)
        >>> torch.equal(conv(x), x)
        True
    """
    weight = getattr(module, 'weight', None)
    groups = 1
    if isinstance(module, nn.Linear):
        nn.init.eye_(weight)
    elif isinstance(module, _CONV):
        _check_conv_identity(module)
        groups = module.groups
        nn.init.dirac_(weight, groups)
    else:
        raise ValueError(f'Identity: {describe_module(module)} is neither a '
                         'Linear nor a Conv1d/2d/3d layer')
    out_f, in_f = weight.shape[0] // groups, weight.shape[1]
    if out_f != in_f:
        each = f' of each of the {groups} groups' if groups > 1 else ''
        add_note(
            weight, f'rectangular: identity on the first {min(out_f, in_f)} '
            f'channels{each}, zeros elsewhere')
    _fill(module, 'bias', bias)


def orthogonal_init(module: nn.Module,
                    gain: float = 1,
                    bias: float = 0) -> None:
    r"""Fill ``module.weight`` with a (semi-)orthogonal matrix (Saxe 2013).

    With the weight flattened to :math:`W \in \mathbb{R}^{r \times c}`
    (``r`` output channels): :math:`W W^T = \text{gain}^2 I_r` if
    :math:`r \le c`, else :math:`W^T W = \text{gain}^2 I_c`.

    Args:
        module (nn.Module): the layer.
        gain (float): as for :func:`torch.nn.init.orthogonal_`. Defaults to 1.
        bias (float): the bias value. Defaults to 0.

    Raises:
        ValueError: naming the layer, if it has no weight of 2 or more dims.

    Example:
        >>> fc = nn.Linear(32, 16)
        >>> orthogonal_init(fc, gain=2)
        >>> w = fc.weight
        >>> torch.allclose(w @ w.T, 4 * torch.eye(16), atol=1e-4)
        True
    """
    weight = getattr(module, 'weight', None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) \
            else None
        raise ValueError(f'Orthogonal: {describe_module(module)} needs a '
                         f'weight with 2 or more dimensions, has {shape}')
    nn.init.orthogonal_(weight, gain=gain)
    _fill(module, 'bias', bias)


def _projection(module: nn.Module, attr: str) -> torch.Tensor:
    """The weight of projection ``attr``: a Parameter or a module's weight."""
    part = getattr(module, attr, None)
    if isinstance(part, torch.Tensor):
        return part
    if isinstance(part, nn.Module) and isinstance(
            getattr(part, 'weight', None), torch.Tensor):
        return part.weight
    raise ValueError(f'LoRAPair: {type(module).__name__} has no projection '
                     f'{attr!r} (a submodule with a weight, or a Parameter)')


def _check_mode(mode: str) -> None:
    if mode not in ('kaiming', 'gaussian'):
        raise ValueError(f'LoRAPair: mode must be \'kaiming\' or '
                         f'\'gaussian\', got {mode!r}')


def lora_pair_init(module: nn.Module,
                   a_attr: str = 'lora_A',
                   b_attr: str = 'lora_B',
                   mode: str = 'kaiming') -> None:
    r"""LoRA init (Hu et al. 2021): the down projection A random, the up
    one B zero, so :math:`\Delta W = B A = 0` at step 0; both biases to 0.

    Args:
        module (nn.Module): holds both projections: submodules with a
            ``weight`` (``nn.Linear``, ``nn.Conv2d``) or Parameters.
        a_attr (str): the down projection A. Defaults to 'lora_A'.
        b_attr (str): the up projection B. Defaults to 'lora_B'.
        mode (str): ``'kaiming'`` (default): A by
            ``kaiming_uniform_(a=sqrt(5))`` (PEFT's and ``nn.Linear``'s),
            :math:`\mathcal{U}(-b, b)`, :math:`b = 1/\sqrt{\text{fan\_in}}`;
            ``'gaussian'``: A from :math:`\mathcal{N}(0, 1/r^2)`, ``r`` the
            rank (A's first dimension), as PEFT's ``init_lora_weights``.

    Raises:
        ValueError: naming the class and the missing attribute, or a bad mode.

    Example:
        >>> m = nn.Module()  # e.g. a LoRALinear
        >>> m.lora_A, m.lora_B = nn.Linear(64, 8), nn.Linear(8, 64)
        >>> lora_pair_init(m, mode='gaussian')
        >>> torch.count_nonzero(m.lora_B.weight @ m.lora_A.weight).item()
        0
    """
    _check_mode(mode)
    a, b = _projection(module, a_attr), _projection(module, b_attr)
    if mode == 'kaiming':
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    else:
        nn.init.normal_(a, std=1.0 / a.shape[0])
    nn.init.zeros_(b)
    for attr in (a_attr, b_attr):
        _fill(getattr(module, attr), 'bias', 0)


@WEIGHT_INITIALIZERS.register_module(name='Zero', force=True)
class ZeroInit(LayerInit):
    r"""Weights of the matched layers to 0, biases to ``bias`` (0): the last
    layer of a residual branch, :math:`x + f(x) = x` at step 0. Selects
    exactly what ``dict(type='Constant', val=0)`` would; a whole module
    (``override``, or no ``layer``) must hold a weight or bias.

    Args: ``bias``, ``bias_prob``, ``layer`` as for the stock initializers.

    Example:
        >>> adapter_cfg = [dict(type='Kaiming', layer='Conv2d'),
        ...                dict(type='Zero', override=dict(name='up'))]
    """
    type_name = 'Zero'
    nothing = 'has no weight or bias and holds no layer that has one'

    def targets(self, m: nn.Module) -> bool:
        return has_weight_or_bias(m)

    def init_layer(self, m: nn.Module) -> None:
        zero_init(m, self.bias)


@WEIGHT_INITIALIZERS.register_module(name='Identity', force=True)
class IdentityInit(LayerInit):
    r"""Matched Linear/Conv1d/2d/3d layers start as the identity,
    :math:`y = x` (see :func:`identity_init`). An ``override`` (or an
    entry without ``layer``) initializes every Linear/Conv layer of the
    module; a matched layer that cannot be the identity is a ``ValueError``
    naming it.

    Args: ``bias``, ``bias_prob``, ``layer`` as for the stock initializers.

    Example:
        >>> init_cfg = dict(type='Identity', layer='Conv2d')  # serial convs
    """
    type_name = 'Identity'
    nothing = 'is neither a Linear nor a Conv1d/2d/3d layer, and holds none'

    def targets(self, m: nn.Module) -> bool:
        return isinstance(m, (nn.Linear, ) + _CONV)

    def init_layer(self, m: nn.Module) -> None:
        identity_init(m, self.bias)


@WEIGHT_INITIALIZERS.register_module(name='Orthogonal', force=True)
class OrthogonalInit(LayerInit):
    r"""(Semi-)orthogonal weights, :math:`W W^T = \text{gain}^2 I` (see
    :func:`orthogonal_init`), bias constant. An ``override`` (or an entry
    without ``layer``) initializes every layer of the module with a weight of
    2 or more dimensions.

    Args:
        gain (int | float): the scaling factor. Defaults to 1.
        ``bias``, ``bias_prob``, ``layer``: as for the stock initializers.

    Example:
        >>> init_cfg = dict(type='Orthogonal', gain=1.0, layer='Linear')
    """
    type_name = 'Orthogonal'
    nothing = ('has no weight with 2 or more dimensions, and holds no layer '
               'that has one')

    def __init__(self, gain: float = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gain = gain

    def targets(self, m: nn.Module) -> bool:
        weight = getattr(m, 'weight', None)
        return isinstance(weight, torch.Tensor) and weight.dim() >= 2

    def init_layer(self, m: nn.Module) -> None:
        orthogonal_init(m, self.gain, self.bias)

    def _get_init_info(self) -> str:
        return f'{type(self).__name__}: gain={self.gain}, bias={self.bias}'


@WEIGHT_INITIALIZERS.register_module(name='LoRAPair', force=True)
class LoRAPairInit(LayerInit):
    r"""The projection pair of LoRA modules a model defines (down
    projection A, up projection B): A random, B zero, so :math:`B A = 0`
    (see :func:`lora_pair_init`). With ``layer``, each matched
    module must hold both projections (else a ``ValueError`` names its class
    and the missing attribute); an ``override`` initializes every module
    under the named one (itself included) that holds both, and fails if none
    does; so does an entry without ``layer`` on the module declaring it (a
    LoRA module itself, or a block holding some).

    Args:
        a_attr (str): the down projection. Defaults to 'lora_A'.
        b_attr (str): the up projection. Defaults to 'lora_B'.
        mode (str): ``'kaiming'`` (``kaiming_uniform_(a=sqrt(5))``) or
            ``'gaussian'`` (:math:`\mathcal{N}(0, 1/r^2)`, ``r`` A's first
            dimension). Defaults to 'kaiming'.
        layer (str | list[str], optional): class names of the LoRA modules.

    Example:
        >>> init_cfg = dict(type='LoRAPair', layer='LoRALinear',
        ...                 mode='gaussian')
        >>> init_cfg = dict(type='LoRAPair')  # on the LoRA module itself
    """
    type_name = 'LoRAPair'

    def __init__(self,
                 a_attr: str = 'lora_A',
                 b_attr: str = 'lora_B',
                 mode: str = 'kaiming',
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if self.bias != 0:
            raise ValueError('LoRAPair: bias/bias_prob do not apply (the '
                             'biases of both projections are set to 0)')
        _check_mode(mode)
        self.a_attr, self.b_attr = a_attr, b_attr
        self.mode = mode

    def targets(self, m: nn.Module) -> bool:
        return all(
            getattr(m, attr, None) is not None
            for attr in (self.a_attr, self.b_attr))

    def init_layer(self, m: nn.Module) -> None:
        lora_pair_init(m, self.a_attr, self.b_attr, self.mode)

    def nothing_error(self, module: nn.Module) -> ValueError:
        return ValueError(
            f'LoRAPair: neither {describe_module(module)} nor any module under '
            f'it has both projections {self.a_attr!r} and {self.b_attr!r} '
            '(submodules with a weight, or Parameters); name them with '
            'a_attr=/b_attr=')

    def _get_init_info(self) -> str:
        return (f'{type(self).__name__}: {self.a_attr} {self.mode}, '
                f'{self.b_attr} zero')
