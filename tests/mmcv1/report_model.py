"""One model, written once, built on either backend's ``BaseModule``: run
as ``python report_model.py mmcv1|mmengine CHECKPOINT OUT.json`` it
initializes the model from CHECKPOINT (``make`` writes one) and writes the
report text and the ledger entries, for comparing the two backends."""
import json
import sys

import torch
import torch.nn as nn

BACKEND = sys.argv[1] if len(sys.argv) > 1 else 'mmcv1'
if BACKEND == 'mmcv1':
    from mmcv.runner import BaseModule
else:
    from mmengine.model import BaseModule

import mmext_init  # noqa: E402


class Adapter(BaseModule):

    def __init__(self) -> None:
        super().__init__(init_cfg=dict(type='Constant', val=0,
                                       layer='Conv2d'))
        self.conv = nn.Conv2d(8, 8, 1)


class Trunk(BaseModule):

    def __init__(self, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.stem = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.block = nn.Conv2d(8, 8, 3)


class Net(BaseModule):

    def __init__(self, checkpoint: str = '') -> None:
        super().__init__(init_cfg=dict(type='Normal', std=0.01,
                                       layer='Linear'))
        self.trunk = Trunk(init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='trunk.',
            init_missing=dict(type='Kaiming', layer='Conv2d')))
        self.trunk.adapters = nn.ModuleList([Adapter()])
        self.trunk.extra = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 2)


def make(path: str) -> None:
    """A checkpoint of the trunk (``trunk.`` keys), ``block`` missing."""
    torch.manual_seed(1)
    trunk = Trunk()
    state = {f'trunk.{k}': v for k, v in trunk.state_dict().items()
             if not k.startswith('block.')}
    torch.save({'state_dict': state, 'meta': {}}, path)


def main() -> None:
    checkpoint, out = sys.argv[2], sys.argv[3]
    torch.manual_seed(0)
    net = Net(checkpoint)
    net.init_weights()
    ledger = mmext_init.get_provenance(net)
    with open(out, 'w') as f:
        json.dump(dict(
            report=mmext_init.format_report(ledger),
            entries={n: e.describe('Net') for n, e in ledger.entries.items()},
            values={n: t.double().sum().item()
                    for n, t in net.state_dict().items()}), f, indent=1)


if __name__ == '__main__':
    main()
