"""A residual bottleneck adapter that is the identity at step 0."""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.registry import MODELS


@MODELS.register_module(force=True)
class ConvAdapter(BaseModule):
    """``x + up(relu(down(x)))`` with 1x1 convs; ``up`` starts at zero.

    The default ``init_cfg`` (Kaiming for both convs, then ``Zero`` on ``up``)
    needs mmext_init's ``Zero`` initializer: import ``mmext_init`` first.

    Example:
        >>> import mmext_init
        >>> adapter = ConvAdapter(64)
        >>> adapter.init_weights()
        >>> x = torch.randn(1, 64, 8, 8)
        >>> torch.equal(adapter(x), x)
        True
    """

    def __init__(self, channels: int, reduction: int = 4,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg or [
            dict(type='Kaiming', layer='Conv2d'),
            dict(type='Zero', override=dict(name='up')),
        ])
        hidden = max(channels // reduction, 1)
        self.down = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.up = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def apply_adapters(adapters: nn.ModuleList,
                   feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Run one adapter per feature map (``adapters[i]`` on ``feats[i]``).

    Example:
        >>> adapters = nn.ModuleList([ConvAdapter(8), ConvAdapter(16)])
        >>> feats = [torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)]
        >>> [f.shape[1] for f in apply_adapters(adapters, feats)]
        [8, 16]
    """
    assert len(adapters) == len(feats), (len(adapters), len(feats))
    return [adapter(f) for adapter, f in zip(adapters, feats)]
