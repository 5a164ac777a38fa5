"""The package's layers (docs/DESIGN.md "Layout"): imports point down, never up, and never in a cycle.

Every module of vit_jax/ is parsed (not imported). A module-level import of another vit_jax
module must go to the same layer or a lower one; the module-level import graph has no cycle; and
no function imports a vit_jax module (a function-level import is only for an optional heavy
dependency such as torch, never to dodge a cycle).
"""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'vit_jax')

# Module (dotted, without 'vit_jax.') or package prefix -> layer; the first matching rule wins.
LAYERS = [
    ('models.__main__', 5),          # `python -m vit_jax.models` prints the model table
    ('errors', 0), ('paths', 0), ('trees', 0), ('config_util', 0), ('cli', 0), ('labels', 0),
    ('images', 0), ('archives', 0), ('tflib', 0), ('configs', 0), ('', 0),
    ('models', 1), ('optim', 1), ('sharding', 1), ('metrics', 1),
    ('checkpoint', 2), ('serving', 2), ('test_utils', 2),
    ('preprocessing', 3), ('augment', 3), ('input_pipeline', 3), ('preprocess', 3),
    ('resolve', 4), ('train', 4), ('fewshot', 4), ('inference_time', 4),
    ('main', 5), ('predict', 5), ('analysis', 5), ('convert', 5), ('export', 5), ('zeroshot', 5), ('api', 5),
    ('plan', 5),
]
NAMES = ['leaves', 'core', 'checkpoint', 'data', 'train', 'entry points']


def _modules() -> dict[str, str]:
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith('.py'):
                rel = os.path.relpath(os.path.join(root, f), PACKAGE)[:-3].replace(os.sep, '.')
                found[rel.removesuffix('.__init__').removesuffix('__init__')] = os.path.join(root, f)
    return found


def _layer(module: str) -> int:
    for prefix, layer in LAYERS:
        if module == prefix or (prefix and module.startswith(prefix + '.')):
            return layer
    raise AssertionError(f'vit_jax.{module} has no layer in tests/test_layers.py: add it to LAYERS')


def _imports(path: str, modules: dict[str, str]) -> tuple[set[str], set[str]]:
    """(module-level, function-level) vit_jax modules imported by the file at `path`."""
    tree = ast.parse(open(path).read())
    top, nested = set(), set()

    def targets(node) -> set[str]:
        out = set()
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` depends on the submodule; `from pkg import name` on pkg itself.
            rel = node.module.removeprefix('vit_jax').removeprefix('.')
            names = [f'{node.module}.{a.name}' if f'{rel}.{a.name}'.lstrip('.') in modules else node.module
                     for a in node.names]
        else:
            return out
        for name in names:
            if name == 'vit_jax' or name.startswith('vit_jax.'):
                rel = name.removeprefix('vit_jax').removeprefix('.')
                while rel and rel not in modules:
                    rel = rel.rpartition('.')[0]
                out.add(rel)
        return out

    for node in tree.body:
        top |= targets(node)
        if isinstance(node, ast.Try | ast.If):
            for child in ast.walk(node):
                top |= targets(child)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for child in ast.walk(node):
                nested |= targets(child)
    return top, nested


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        top, nested = _imports(path, modules)
        # The package root alone imports lazily: `vit_jax.load` without importing Flax on `import vit_jax`.
        assert not nested or (module == '' and nested == {'api'}), \
            f'vit_jax.{module} imports {sorted(nested)} inside a function'
        # A package imports its own submodules; that is not an edge between layers.
        graph[module] = {m for m in top if m != module and not (module == '' and m)}
    return graph


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return [f'vit_jax.{module or "__init__"} ({NAMES[_layer(module)]}) imports vit_jax.{target} '
            f'({NAMES[_layer(target)]})'
            for module, imported in sorted(graph.items()) for target in sorted(imported)
            if _layer(target) > _layer(module)]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as [m1, m2, ..., m1], or None."""
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if not state.get(nxt):
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for module in sorted(graph):
        if not state.get(module):
            found = visit(module, [module])
            if found:
                return found
    return None


def test_every_import_points_down_the_layers():
    problems = _upward(_graph())
    assert not problems, '\n'.join(problems)


def test_there_is_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, 'import cycle: ' + ' -> '.join(f'vit_jax.{m}' for m in cycle)


def test_the_checks_see_violations():
    """The rules bite on a made-up graph: an upward import and a cycle are reported."""
    graph = {'checkpoint.loader': {'train'}, 'train': {'checkpoint.loader'}}
    assert _upward(graph) == ['vit_jax.checkpoint.loader (checkpoint) imports vit_jax.train (train)']
    assert _cycle(graph) == ['checkpoint.loader', 'train', 'checkpoint.loader']
