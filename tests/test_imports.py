"""The import graph of tf_simclr's modules has no cycle.

Read from the source with `ast` (no module is imported): every `import` and
`from ... import` statement, at the top of a module and inside functions
alike, since a function-level import only defers a cycle to the first call.
"""

import ast
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'tf_simclr'


def module_files(root=REPO_ROOT, package=PACKAGE):
  """{module name: file path} of every .py file of `package`."""
  found = {}
  for directory, _, names in os.walk(os.path.join(root, package)):
    for name in names:
      if not name.endswith('.py'):
        continue
      path = os.path.join(directory, name)
      parts = os.path.relpath(path, root)[:-len('.py')].split(os.sep)
      if parts[-1] == '__init__':
        parts = parts[:-1]
      found['.'.join(parts)] = path
  return found


def _is_package(name, modules, root):
  return name in modules and os.path.basename(modules[name]) == '__init__.py'


def imported_modules(name, path, modules, root=REPO_ROOT):
  """The modules of `modules` that module `name` (file `path`) imports,
  anywhere in its body."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  package = name if _is_package(name, modules, root) else name.rpartition('.')[0]
  targets = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        targets.add(alias.name)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base_parts = package.split('.')
        base_parts = base_parts[:len(base_parts) - node.level + 1]
        base = '.'.join(base_parts + ([node.module] if node.module else []))
      else:
        base = node.module
      for alias in node.names:
        # `from package import submodule` imports the submodule; `from module
        # import name` the module.
        submodule = f'{base}.{alias.name}'
        targets.add(submodule if submodule in modules else base)
  return {target for target in targets if target in modules and target != name}


def import_graph(root=REPO_ROOT, package=PACKAGE):
  modules = module_files(root, package)
  return {name: imported_modules(name, path, modules, root)
          for name, path in modules.items()}


def find_cycle(graph):
  """One cycle of `graph` as a list of names (first == last), or None."""
  visiting, done = set(), set()
  stack = []

  def visit(node):
    visiting.add(node)
    stack.append(node)
    for child in sorted(graph.get(node, ())):
      if child in visiting:
        return stack[stack.index(child):] + [child]
      if child not in done:
        cycle = visit(child)
        if cycle:
          return cycle
    visiting.discard(node)
    done.add(node)
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in done:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_find_cycle_sees_lazy_imports(tmp_path):
  """The checker itself: a cycle closed by a function-level import counts."""
  package = tmp_path / 'pkg'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'a.py').write_text('from pkg import b\n')
  (package / 'b.py').write_text(
      'def f():\n  from pkg import c\n  return c\n')
  (package / 'c.py').write_text('import pkg.a\n')
  (package / 'd.py').write_text('from . import a\nfrom .b import f\n')
  graph = import_graph(str(tmp_path), 'pkg')
  assert graph['pkg.d'] == {'pkg.a', 'pkg.b'}
  assert find_cycle(graph) == ['pkg.a', 'pkg.b', 'pkg.c', 'pkg.a']
  (package / 'c.py').write_text('')
  assert find_cycle(import_graph(str(tmp_path), 'pkg')) is None


def test_tf_simclr_modules_import_no_cycle():
  graph = import_graph()
  assert 'tf_simclr.config' in graph and 'tf_simclr.checkpoints' in graph
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


if __name__ == '__main__':
  pytest.main([__file__])
