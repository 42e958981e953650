"""Every public function and class of ``mmext_init.__all__`` has a
Google-style docstring: a summary line, an ``Example:`` section, and an
``Args:`` (or, for a dataclass, ``Attributes:``) section naming each of its
parameters (for a class: those of ``__init__``, documented in the class
docstring or in ``__init__``'s)."""
import dataclasses
import inspect
import re
from typing import List

import pytest

import mmext_init

PUBLIC = [
    name for name in mmext_init.__all__
    if inspect.isclass(getattr(mmext_init, name))
    or inspect.isfunction(inspect.unwrap(getattr(mmext_init, name)))
]
SECTION = r'^\s*{}:\s*$'


def parameters(obj) -> List[str]:
    """The documented parameters of ``obj``: not self, *args, **kwargs."""
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            return [f.name for f in dataclasses.fields(obj) if f.init]
        if obj.__init__ is object.__init__ or not inspect.isfunction(
                obj.__init__):
            return []  # e.g. an exception class: BaseException's arguments
        obj = obj.__init__
    params = inspect.signature(inspect.unwrap(obj)).parameters.values()
    return [
        p.name for p in params if p.name not in ('self', 'cls')
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def docstring(obj) -> str:
    """The docstring of ``obj``, plus its own ``__init__``'s for a class."""
    doc = inspect.getdoc(obj) or ''
    if inspect.isclass(obj) and '__init__' in vars(obj):
        doc += '\n' + (inspect.getdoc(obj.__init__) or '')
    return doc


def section(doc: str, title: str) -> str:
    """The indented body under the ``title:`` header of ``doc`` ('')."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if re.match(SECTION.format(title), line):
            indent = len(line) - len(line.lstrip())
            body = []
            for rest in lines[i + 1:]:
                if rest.strip() and len(rest) - len(rest.lstrip()) <= indent:
                    break
                body.append(rest)
            return '\n'.join(body)
    return ''


def test_public_names_are_found():
    assert 'install' in PUBLIC and 'PretrainedInit' in PUBLIC
    assert 'INSERT_TYPES' not in PUBLIC  # a registry: an object


@pytest.mark.parametrize('name', PUBLIC)
def test_summary_and_example(name):
    doc = inspect.getdoc(getattr(mmext_init, name)) or ''
    assert doc.splitlines() and doc.splitlines()[0].strip(), \
        f'{name}: no summary line'
    assert '>>>' in section(doc, 'Example'), \
        f'{name}: no Example: section with a doctest'


@pytest.mark.parametrize('name', PUBLIC)
def test_args_name_every_parameter(name):
    obj = getattr(mmext_init, name)
    params = parameters(obj)
    doc = docstring(obj)
    title = 'Attributes' if dataclasses.is_dataclass(obj) else 'Args'
    body = section(doc, title)
    if params:
        assert body, f'{name}: parameters {params} but no {title}: section'
    undocumented = [
        p for p in params
        if not re.search(rf'^\s+\**(?:``)?{p}(?:``)?\b', body, re.M)
    ]
    assert not undocumented, \
        f'{name}: {title}: does not name {undocumented}'


def test_section_parser_sees_a_missing_parameter():
    def probe(alpha: int, beta: int = 0) -> None:
        """Probe.

        Args:
            alpha (int): documented.

        Example:
            >>> probe(1)
        """
    body = section(inspect.getdoc(probe), 'Args')
    assert re.search(r'^\s+alpha\b', body, re.M)
    assert not re.search(r'^\s+beta\b', body, re.M)
    assert parameters(probe) == ['alpha', 'beta']
