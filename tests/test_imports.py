"""No import cycles among the modules of models/ and service/.

Read from the source with ast, not by importing: every import a module runs counts, at the top
or inside a function, `import a.b` and `from a import b` alike, except those under
`if TYPE_CHECKING:` (never run) and under `if __name__ == "__main__":` (run only when the file
is the program, as the module `__main__`, which nothing imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "service")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def never_imports_as_a_module(test: ast.expr) -> bool:
    """Whether an `if` with this test guards code that never runs when the module is imported."""
    if isinstance(test, ast.Name | ast.Attribute):  # TYPE_CHECKING, typing.TYPE_CHECKING
        return (test.id if isinstance(test, ast.Name) else test.attr) == "TYPE_CHECKING"
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and never_imports_as_a_module(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of PACKAGES it imports."""
    paths = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:  # relative: from the package, up one per extra dot
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from a import b`: module a.b if there is one, else a
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in paths else base)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another, round a loop of any length (the strongly
    connected components, by Tarjan's algorithm, that hold more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            groups.append(sorted([*group, node]))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [group for group in groups if len(group) > 1]


def test_the_graph_sees_the_imports():
    graph = import_graph()
    assert {"models.config", "models.evaluation", "models.resume"} <= graph["models.train"]
    assert "models.train" in graph["models.cli"]  # from inside a function
    assert "models.cli" not in graph["models.train"]  # only under __name__ == "__main__"
    assert "models.cli" in graph["service.cli"]  # `from models import cli`


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(group) for group in found)
