"""Optimizer state matched to parameters by name, not by position.

Torch saves an optimizer's state by position (group ``i``, parameter ``j``),
so a resume after the trainable set or the grouping changed loads momenta
onto the wrong tensors, or fails with a count mismatch. Optimizers built by
``ProvenanceOptimWrapperConstructor`` write each group's parameter names
(``param_names``, torch's own key) into their state dict and, when loading
one that has them, map every saved state to the parameter of the same name
in the current groups. A resume where the trainable set differs is an error
that lists the differences.

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> before = torch.optim.SGD([{'params': [net[0].weight, net[1].weight]},
    ...                           {'params': [net[0].bias, net[1].bias],
    ...                            'lr': 0.5}], lr=0.1, momentum=0.9)
    >>> _ = track_names(before, net)
    >>> net(torch.ones(1, 2)).sum().backward(); before.step()
    >>> saved = before.state_dict()
    >>> saved['param_groups'][1]['param_names']
    ['0.bias', '1.bias']
    >>> after = torch.optim.SGD([{'params': [net[1].bias, net[0].bias]},
    ...                          {'params': [net[1].weight, net[0].weight]}],
    ...                         lr=0.1, momentum=0.9)
    >>> _ = track_names(after, net)
    >>> after.load_state_dict(saved)
    >>> after.param_groups[0]['lr'], torch.equal(
    ...     after.state[net[0].bias]['momentum_buffer'],
    ...     before.state[net[0].bias]['momentum_buffer'])
    (0.5, True)
"""
from typing import Any, Dict, List, Set, Tuple

import torch
import torch.nn as nn

from ..errors import InitConfigError
from ..provenance.report import fold_names

NAMES_KEY = 'param_names'
StateDict = Dict[str, Any]


class OptimizerStateError(InitConfigError):
    """A saved optimizer state does not fit the current parameter groups."""


def param_names(root: nn.Module) -> Dict[int, str]:
    """``id(parameter)`` -> its (first) name in ``root``."""
    return {id(p): n for n, p in root.named_parameters()}


def group_names(optimizer: torch.optim.Optimizer,
                root: nn.Module) -> List[List[str]]:
    """The names of each group's parameters, in order."""
    names = param_names(root)
    return [[names.get(id(p), f'<not in {type(root).__name__}>')
             for p in group['params']] for group in optimizer.param_groups]


def _differences(now: Set[str], then: Set[str]) -> str:
    parts = []
    if then - now:
        parts.append(f'{len(then - now)} trained then and do not now: '
                     f'{", ".join(fold_names(sorted(then - now))[:8])}')
    if now - then:
        parts.append(f'{len(now - then)} train now and did not then: '
                     f'{", ".join(fold_names(sorted(now - then))[:8])}')
    return '; '.join(parts)


def remap_by_name(saved: StateDict, current: List[List[str]]) -> StateDict:
    """``saved`` (with ``param_names``) rearranged for groups whose
    parameter names are ``current``; each current group takes the options
    (lr, momentum...) of the saved group its parameters were in."""
    where: Dict[str, Tuple[int, int]] = {}
    for g, group in enumerate(saved['param_groups']):
        for name, index in zip(group[NAMES_KEY], group['params']):
            where[name] = (g, index)
    now = {n for names in current for n in names}
    if now != set(where):
        raise OptimizerStateError(
            'the resumed optimizer state is for another set of trainable '
            f'parameters: {_differences(now, set(where))}. Resume with the '
            'freeze/rules and UnfreezeHook milestones of the run that saved '
            'it, or start a new optimizer (load_from without resume).')
    groups, state, index = [], {}, 0
    for i, names in enumerate(current):
        sources = sorted({where[n][0] for n in names})
        if len(sources) > 1:
            raise OptimizerStateError(
                f'optimizer group {i} ({", ".join(fold_names(names)[:4])}) '
                f'holds parameters of saved groups {sources}, whose options '
                'may differ: the grouping (rules, layer_decay, custom_keys) '
                'changed since the checkpoint was saved')
        source = saved['param_groups'][sources[0]] if sources else {}
        group = {k: v for k, v in source.items()
                 if k not in ('params', NAMES_KEY)}
        group['params'] = []
        for name in names:
            old = where[name][1]
            if old in saved['state']:
                state[index] = saved['state'][old]
            group['params'].append(index)
            index += 1
        groups.append(group)
    return dict(saved, state=state, param_groups=groups)


def track_names(optimizer: torch.optim.Optimizer,
                root: nn.Module) -> Tuple[Any, Any]:
    """Make ``optimizer``'s state dict name-aware for the parameters of
    ``root`` (see the module docstring); returns the two hook handles."""

    def add_names(opt: torch.optim.Optimizer, state: StateDict) -> StateDict:
        for group, names in zip(state['param_groups'],
                                group_names(opt, root)):
            group[NAMES_KEY] = names
        return state

    def load_by_name(opt: torch.optim.Optimizer,
                     state: StateDict) -> StateDict:
        if not all(NAMES_KEY in g for g in state['param_groups']):
            return state  # written without names: torch's positions
        return remap_by_name(state, group_names(opt, root))

    return (optimizer.register_state_dict_post_hook(add_names),
            optimizer.register_load_state_dict_pre_hook(load_by_name))
