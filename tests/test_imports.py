"""The package's modules import each other in one direction: no cycle, lazy imports included."""

import ast
from pathlib import Path

import stepgraph

PACKAGE = Path(stepgraph.__file__).parent


def module_graph() -> dict[str, set[str]]:
    """``{module: the stepgraph modules it imports}``, from the source (imports inside functions too)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path

    def owner(name: str) -> str | None:  # the module that defines ``name`` (a module or a name in one)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names if a.name.startswith("stepgraph"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.startswith("stepgraph"):
                    deps.update(owner(f"{base}.{a.name}") for a in node.names)
        graph[name] = {d for d in deps if d and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_the_source():
    graph = module_graph()
    assert "stepgraph.train.callbacks" in graph["stepgraph.train.checkpointing"]
    assert "stepgraph.train.feeds" in graph["stepgraph.train.trainer"]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_inside_stepgraph():
    assert cycles(module_graph()) == []


def test_every_module_of_the_engine_has_a_test_file_of_its_own():
    tests = Path(__file__).parent / "train"
    modules = [p.stem for p in (PACKAGE / "train").glob("*.py") if p.stem != "__init__"]
    assert len(modules) > 10
    assert [m for m in modules if not (tests / f"test_{m}.py").is_file()] == []
