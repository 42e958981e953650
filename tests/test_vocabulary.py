"""docs/vocabulary.md's table against the code: for each place a config
writes to, the keys (and the ``key='value'`` names) the table lists are
exactly those the code accepts there, so the page cannot drift."""
import inspect
import os
import re
import sys
from collections import defaultdict
from typing import Dict, Set

import pytest
import torch.nn as nn
from mmengine.model.weight_init import BaseInit
from mmengine.registry import HOOKS, WEIGHT_INITIALIZERS

import mmext_init
from mmext_init.deferred.construction import ENV_VAR
from mmext_init.errors import InitConfigError
from mmext_init.hooks.unfreeze import MILESTONE_KEYS
from mmext_init.inserting.insert import insert_modules
from mmext_init.loading.adapt import AdaptTransform
from mmext_init.loading.options import PretrainedOptions
from mmext_init.session.runner_load import LOAD_FROM_CFG, LOAD_FROM_KEYS
from mmext_init.training.plan import NEW_KEYS, RULE_KEYS, TrainingCfg
from mmext_init.inserting.targets import select_targets
from mmext_init.training.selectors import (REGEX_KEYS, SELECTOR_KEYS,
                                           ParamTable, SelectorError, select)

DOCS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'docs')
sys.path.insert(0, os.path.join(DOCS, '_ext'))
from mmext_docs import registered  # noqa: E402

VOCABULARY = os.path.join(DOCS, 'vocabulary.md')


def table() -> Dict[str, Set[str]]:
    """``where`` -> the keys the table lists there."""
    with open(VOCABULARY) as f:
        rows = [line for line in f if line.startswith('| `')]
    places = defaultdict(set)
    for row in rows:
        key, where = [c.strip() for c in row.split('|')[1:3]]
        places[where].add(key.strip('`'))
    return places


def own_args(cls: type, base: type = object) -> Set[str]:
    """The named ``__init__`` parameters of ``cls`` not taken from ``base``."""
    params = inspect.signature(cls.__init__).parameters.values()
    inherited = set(inspect.signature(base.__init__).parameters)
    return {p.name for p in params if p.name not in inherited | {'self'}
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def plain(keys: Set[str]) -> Set[str]:
    return {k for k in keys if '=' not in k}


def named(keys: Set[str], key: str) -> Set[str]:
    """The values of ``key='value'`` rows."""
    return {m.group(1) for k in keys
            for m in [re.fullmatch(rf"{key}='(\w+)'", k)] if m}


PLACES = table()


def test_no_key_is_listed_twice_in_one_place():
    with open(VOCABULARY) as f:
        rows = [tuple(c.strip() for c in line.split('|')[1:3])
                for line in f if line.startswith('| `')]
    assert len(rows) == len(set(rows)), [r for r in rows if rows.count(r) > 1]


def test_pretrained_arguments_and_converters():
    keys = PLACES["`dict(type='Pretrained', ...)`"]
    assert plain(keys) == own_args(PretrainedOptions)
    assert own_args(mmext_init.PretrainedInit) == own_args(PretrainedOptions)
    assert named(keys, 'converter') == {
        n for n, _ in registered(mmext_init.CHECKPOINT_CONVERTERS)}


def test_init_types_and_their_arguments():
    types = dict(registered(WEIGHT_INITIALIZERS))
    keys = PLACES['`init_cfg=dict(type=...)`']
    assert named(keys, 'type') == set(types)
    assert plain(keys) == {'override'}
    for name, cls in types.items():
        where = (f"`dict(type='{name}', ...)` in `init_cfg`"
                 if name in dict(registered(mmext_init.INSERT_TYPES))
                 else f"`dict(type='{name}', ...)`")
        # BaseInit's layer/bias/bias_prob are stock MMEngine's keys
        assert plain(PLACES.get(where, set())) == own_args(
            cls, BaseInit) - {'layer'}, name


def test_adapt_transforms_and_their_arguments():
    types = dict(registered(mmext_init.ADAPT_TRANSFORMS))
    keys = PLACES['`adapt=[dict(...)]`']
    assert named(keys, 'type') == set(types)
    assert plain(keys) == own_args(AdaptTransform) == {'keys'}
    for name, cls in types.items():
        assert PLACES.get(f"`adapt=[dict(type='{name}', ...)]`", set()) == \
            own_args(cls) - {'keys'}, name


def test_insert_entries_types_and_their_arguments():
    types = dict(registered(mmext_init.INSERT_TYPES))
    keys = PLACES['`insert=[dict(...)]`']
    assert PLACES['`model=dict(...)`'] == {'insert'}
    assert named(keys, 'type') == set(types)
    for name, cls in types.items():
        assert PLACES[f"`insert=[dict(type='{name}', ...)]`"] == \
            own_args(cls), name
    # every entry key the table names is taken by the insertion
    net = nn.Sequential(nn.Linear(2, 2))
    insert_modules(net, [dict(type='LoRA', targets='0', layer='Linear',
                              rank=1, name='a')])
    assert plain(keys) == {'type', 'targets', 'layer', 'name'}
    assert hasattr(net[0], 'lora_A')


def test_training_keys():
    assert PLACES['`optim_wrapper=dict(...)`'] == {
        f"constructor='{mmext_init.ProvenanceOptimWrapperConstructor.__name__}'"}
    assert PLACES['`paramwise_cfg=dict(...)`'] == set(NEW_KEYS)
    assert PLACES['`rules=[dict(...)]`'] == set(RULE_KEYS)
    assert PLACES['selector `dict(...)`'] == set(SELECTOR_KEYS)
    listed = PLACES['`layer_decay=dict(...)`']
    TrainingCfg.pop_from({'layer_decay': {k: 0.5 for k in listed}})
    with pytest.raises(InitConfigError):
        TrainingCfg.pop_from({'layer_decay': {'rate': 0.5, 'depth': 1}})


def test_hooks_and_their_arguments():
    hooks = dict(registered(HOOKS))
    assert named(PLACES['`custom_hooks=[dict(...)]`'], 'type') == set(hooks)
    for name, cls in hooks.items():
        assert PLACES[f"`dict(type='{name}', ...)`"] == own_args(cls), name
    assert PLACES['`milestones=[dict(...)]`'] == set(MILESTONE_KEYS)


def test_load_from_cfg_and_the_environment():
    assert PLACES['config (top level)'] == {LOAD_FROM_CFG}
    assert PLACES['`load_from_cfg=dict(...)`'] == set(LOAD_FROM_KEYS)
    assert PLACES['environment'] == {ENV_VAR}


def _rule(name: str) -> Set[str]:
    """The keys the page's rule ``name`` (``REGEX``, ``CLASS``) lists."""
    with open(VOCABULARY) as f:
        text = f.read()
    body = text.split(f'- **{name}**')[1].split('\n\n')[0]
    return set(re.findall(r'`(\w+)`', body))


def test_the_regex_rule_holds_where_the_page_says():
    """A pattern found inside a name does not match it; the whole name
    does (``re.fullmatch``), for each key the rule lists."""
    listed = _rule('REGEX')
    assert set(REGEX_KEYS) | {'targets', 'keys', 'include'} <= listed
    net = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.BatchNorm1d(2))
    assert not AdaptTransform('weight').selects('0.0.weight')
    assert AdaptTransform(r'.*weight').selects('0.0.weight')
    table = ParamTable.build(net, {})
    with pytest.raises(SelectorError, match='matches only part of'):
        select(dict(name='weight'), table)
    assert len(select(dict(name=r'.*weight'), table)) == 2
    assert [p for p, _ in select_targets(net, '0', None, 'insert[0]')] == \
        ['0']


def test_the_class_rule_holds_where_the_page_says():
    """A base class two levels up names the module (``BatchNorm1d`` ->
    ``_BatchNorm`` -> ``_NormBase``), for each key the rule lists."""
    assert {'layer', 'module_type', 'layers'} <= _rule('CLASS')
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert [p for p, _ in select_targets(net, None, '_NormBase',
                                         'insert[0]')] == ['1']
    table = ParamTable.build(net, {})
    assert [p.name for p in select(dict(module_type='_NormBase'),
                                   table)] == ['1.weight', '1.bias']


def test_every_place_is_checked():
    checked = {"`dict(type='Pretrained', ...)`", '`init_cfg=dict(type=...)`',
               '`adapt=[dict(...)]`', '`insert=[dict(...)]`',
               '`model=dict(...)`', '`optim_wrapper=dict(...)`',
               '`paramwise_cfg=dict(...)`', '`rules=[dict(...)]`',
               'selector `dict(...)`', '`layer_decay=dict(...)`',
               '`custom_hooks=[dict(...)]`', '`milestones=[dict(...)]`',
               'config (top level)', '`load_from_cfg=dict(...)`',
               'environment'}
    per_type = re.compile(r"`(adapt=\[|insert=\[)?dict\(type='\w+', "
                          r"\.\.\.\)\]?`( in `init_cfg`)?")
    assert {w for w in PLACES if w not in checked
            and not per_type.fullmatch(w)} == set()
