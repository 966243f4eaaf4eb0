"""The package's import structure: no cycles among sicog modules, the model stands alone, and the record
contract (sicog.data) needs no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sicog

PACKAGE = Path(sicog.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (imports for type checkers only)."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _absolute(node: ast.ImportFrom, path: Path) -> str | None:
    """The module a ``from ... import`` names, relative imports resolved against ``path``'s package."""
    if not node.level:
        return node.module
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path) -> set[str]:
    """The sicog modules a file imports at run time, at module level or inside functions."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("sicog")}
        elif isinstance(node, ast.ImportFrom) and (module := _absolute(node, path)) and module.startswith("sicog"):
            found |= {f"{module}.{alias.name}" for alias in node.names} | {module}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_no_import_cycles_among_sicog_modules():
    """Deferred imports inside functions count too: two modules that need each other are one tangle."""
    edges = graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_model_imports_nothing_else_from_sicog():
    outside = {module: sorted(i for i in found if not i.startswith("sicog.model"))
               for module, found in graph().items() if module.startswith("sicog.model")}
    assert {m: found for m, found in outside.items() if found} == {}


def test_the_record_contract_imports_no_torch():
    modules = sorted(module_name(p) for p in (PACKAGE / "data").glob("*.py"))
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
