"""The import graph of kajax flows one way: no module imports itself back through others
(function-level imports included), and nothing imports the command-line tops."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kajax")
TOPS = ("kajax.main", "kajax.build_data", "kajax.predict", "kajax.scaling_estimate",
        "kajax.benchmarks")


def _imports():
  """{module: set of kajax modules it imports anywhere in its file}."""
  graph = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(root, name)
      rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
      module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
      with open(path) as f:
        tree = ast.parse(f.read())
      deps = set()
      for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kajax"):
          deps |= ({f"{node.module}.{a.name}" for a in node.names} if node.module == "kajax"
                   else {node.module})
        elif isinstance(node, ast.Import):
          deps |= {a.name for a in node.names if a.name.startswith("kajax")}
      graph[module] = deps - {module}
  return graph


def _cycle(graph):
  """One import cycle as a list of modules, or None."""
  state = {}

  def visit(module, path):
    state[module] = "open"
    for dep in sorted(graph.get(module, ())):
      if state.get(dep) == "open":
        return path[path.index(dep):] + [dep]
      if dep in graph and dep not in state:
        found = visit(dep, path + [dep])
        if found:
          return found
    state[module] = "done"
    return None

  for module in sorted(graph):
    if module not in state:
      found = visit(module, [module])
      if found:
        return found
  return None


def test_no_import_cycles():
  graph = _imports()
  assert len(graph) > 30
  assert "kajax.amalgamate" in graph["kajax.main"]  # imported inside a function: seen too
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_nothing_imports_the_command_line_tops():
  graph = _imports()
  for module, deps in graph.items():
    if module.startswith(TOPS):
      continue
    assert not [d for d in deps if d.startswith(TOPS)], module


def test_the_cycle_finder_finds_cycles():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None
