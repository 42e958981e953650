"""Sphinx directives that generate the API page from the code, so a new
public name or registered type appears without editing a page.

``.. mmext-api::`` documents every name of ``mmext_init.__all__`` (autodoc,
in ``__all__`` order); ``.. mmext-registry:: NAME`` lists the entries a
config names by ``type=`` (or ``converter=``) that mmext_init registers in
the registry ``NAME`` (a key of :data:`REGISTRIES`), each with its
docstring. Both emit reStructuredText: use them inside ``{eval-rst}``.
"""
import inspect
from typing import Any, Dict, List, Tuple

from docutils import nodes
from docutils.statemachine import StringList
from mmengine.registry import (HOOKS, OPTIM_WRAPPER_CONSTRUCTORS,
                               WEIGHT_INITIALIZERS, Registry)
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

import mmext_init

# name in the page -> (registry, how a config names an entry)
REGISTRIES: Dict[str, Tuple[Registry, str]] = {
    'WEIGHT_INITIALIZERS': (WEIGHT_INITIALIZERS,
                            "init_cfg=dict(type='{}')"),
    'INSERT_TYPES': (mmext_init.INSERT_TYPES, "insert=[dict(type='{}')]"),
    'ADAPT_TRANSFORMS': (mmext_init.ADAPT_TRANSFORMS,
                         "adapt=[dict(type='{}')]"),
    'CHECKPOINT_CONVERTERS': (mmext_init.CHECKPOINT_CONVERTERS,
                              "converter='{}'"),
    'HOOKS': (HOOKS, "custom_hooks=[dict(type='{}')]"),
    'OPTIM_WRAPPER_CONSTRUCTORS': (OPTIM_WRAPPER_CONSTRUCTORS,
                                   "optim_wrapper=dict(constructor='{}')"),
}


def registered(registry: Registry) -> List[Tuple[str, Any]]:
    """The ``(name, object)`` entries of ``registry`` defined by
    mmext_init, in registration order."""
    return [(name, obj) for name, obj in registry.module_dict.items()
            if getattr(obj, '__module__', '').startswith('mmext_init.')]


def public_name(obj: Any) -> str:
    """The name of ``obj`` in ``mmext_init.__all__``, or ''."""
    return next((n for n in mmext_init.__all__
                 if getattr(mmext_init, n) is obj), '')


def autodoc_kind(obj: Any) -> str:
    """The autodoc directive documenting ``obj``."""
    if inspect.isclass(obj):
        return 'autoexception' if issubclass(obj, BaseException) \
            else 'autoclass'
    return 'autofunction' if callable(obj) else 'autodata'


class RstDirective(SphinxDirective):
    """A directive whose output is generated reStructuredText."""

    def lines(self) -> List[str]:
        raise NotImplementedError

    def run(self) -> List[nodes.Node]:
        source = self.get_source_info()[0]
        content = StringList()
        for line in self.lines():
            content.append(line, source)
        node = nodes.container()
        nested_parse_with_titles(self.state, content, node)
        return node.children


class PublicApi(RstDirective):
    """Every name of ``mmext_init.__all__``, documented by autodoc."""

    def lines(self) -> List[str]:
        out = ['.. currentmodule:: mmext_init', '']
        for name in mmext_init.__all__:
            obj = getattr(mmext_init, name)
            kind = autodoc_kind(obj)
            out.append(f'.. {kind}:: mmext_init.{name}')
            if kind == 'autoclass':
                out.append('   :members:')
            if isinstance(obj, Registry):
                out += ['   :annotation:', '',
                        f'   The MMEngine registry {obj.name!r}; its entries '
                        'are listed under "Registered config types".']
            out.append('')
        return out


class RegistryEntries(RstDirective):
    """The entries mmext_init registers in one registry: how a config
    names each, and its docstring (or, for a public name, its summary
    and a link to its entry)."""
    required_arguments = 1

    def lines(self) -> List[str]:
        registry, form = REGISTRIES[self.arguments[0]]
        out: List[str] = []
        for name, obj in registered(registry):
            out.append(f'``{form.format(name)}``')  # a definition list
            public = public_name(obj)
            if public:
                summary = (inspect.getdoc(obj) or '').split('\n\n')[0]
                out += ['   ' + line for line in summary.splitlines()]
                out += ['', f'   The public :obj:`mmext_init.{public}`.', '']
            else:
                path = f'{obj.__module__}.{obj.__qualname__}'
                out += [f'   .. {autodoc_kind(obj)}:: {path}', '']
        return out


def setup(app: Sphinx) -> Dict[str, Any]:
    app.add_directive('mmext-api', PublicApi)
    app.add_directive('mmext-registry', RegistryEntries)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
