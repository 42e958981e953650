"""The package's shape: layers imported one way down, no import cycle, no
import inside a function without a stated reason, no private name imported
across modules (read from the source, so a new module is checked too)."""
import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

import mmext_init

PACKAGE = Path(mmext_init.__file__).parent
# bottom up; units on one layer do not import each other
LAYERS: List[Set[str]] = [
    {'errors', 'context', 'aten', 'matching'},
    {'provenance', 'checkpoint'},
    {'loading', 'deferred'},
    {'session'},
    {'initializers', 'inserting'},
    {'training'},
    {'hooks'},
    {'plugin'},
    {'mmcv1'},  # the OpenMMLab 1.x backend: on plugin's rows and mixin
    {''},  # mmext_init/__init__.py: the public API
    {'tools', 'examples'},  # the command-line tools and example modules
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(['mmext_init'] + parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.joinpath(*name.split('.')[1:]) / '__init__.py').exists()


def _resolve(module: str, node: ast.ImportFrom) -> List[str]:
    """The package modules an ``from ... import ...`` statement imports."""
    if node.level == 0:
        if not (node.module or '').startswith('mmext_init'):
            return []
        base = node.module
    else:
        parts = module.split('.')
        here = parts if _is_package(module) else parts[:-1]
        base = '.'.join(here[:len(here) - node.level + 1] +
                        ([node.module] if node.module else []))
    found = []
    for alias in node.names:
        sub = f'{base}.{alias.name}'
        found.append(sub if sub in MODULES else base)
    return found


MODULES: Dict[str, Path] = {
    _module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def _imports() -> Dict[str, List[Tuple[str, ast.ImportFrom, bool]]]:
    """module -> (imported module, statement, inside a function)."""
    out: Dict[str, List[Tuple[str, ast.ImportFrom, bool]]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        in_function = {id(n) for f in ast.walk(tree)
                       if isinstance(f, (ast.FunctionDef,
                                         ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        out[name] = [(target, node, id(node) in in_function)
                     for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)
                     for target in _resolve(name, node)]
        out[name] += [(alias.name, node, id(node) in in_function)
                      for node in ast.walk(tree)
                      if isinstance(node, ast.Import)
                      for alias in node.names
                      if alias.name.startswith('mmext_init.')]
    return out


IMPORTS = _imports()


def _unit(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def _layer(module: str) -> int:
    unit = _unit(module)
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise AssertionError(f'{module}: unit {unit!r} is on no layer; add it '
                         'to LAYERS in tests/test_layers.py')


def test_every_unit_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_layers_are_imported_one_way_down():
    wrong = []
    for module, imports in IMPORTS.items():
        for target, node, _ in imports:
            if _unit(target) == _unit(module):
                continue
            if _layer(target) >= _layer(module):
                wrong.append(f'{module}:{node.lineno} imports {target}')
    assert not wrong, '\n'.join(wrong)


def test_no_import_cycle():
    graph = {m: {t for t, _, inside in imports if not inside and t != m}
             for m, imports in IMPORTS.items()}
    state: Dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(module: str, stack: List[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_imports_inside_functions_give_a_reason():
    bare = []
    for module, imports in IMPORTS.items():
        lines = MODULES[module].read_text().splitlines()
        for target, node, inside in imports:
            if inside and '#' not in lines[node.lineno - 1]:
                bare.append(f'{module}:{node.lineno} imports {target}')
    assert not bare, '\n'.join(bare)


def test_no_private_name_imported_across_modules():
    private = [
        f'{module}:{node.lineno} {alias.name}'
        for module, imports in IMPORTS.items()
        for _, node, _ in imports if isinstance(node, ast.ImportFrom)
        for alias in node.names if alias.name.startswith('_')]
    assert not private, '\n'.join(sorted(set(private)))


def test_the_check_sees_a_violation(tmp_path):
    """The resolver finds upward imports: a loading module importing the
    session layer would be reported."""
    node = ast.parse('from ..session.init_session import x').body[0]
    target = _resolve('mmext_init.loading.plan', node)[0]
    assert target == 'mmext_init.session.init_session'
    assert _layer(target) > _layer('mmext_init.loading.plan')
