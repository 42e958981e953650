"""Deferred construction-time init (issue 6): placeholder, being written.

``settle(root, protected)`` is called by the init session after planning and
before any initializer runs: tensors whose constructor init was deferred are
either dropped from the pending set (the checkpoint will provide them) or
replayed now.
"""
from typing import Mapping, Set

import torch


def settle(tensors: Mapping[str, torch.Tensor], protected: Set[str]) -> None:
    """Replay deferred constructor init of ``tensors`` not in ``protected``."""
