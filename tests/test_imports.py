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


def imports(path: Path, top_level_only: bool) -> set[str]:
    """The sicog modules a file imports (at module level only, or anywhere in it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` blocks do not import at run time
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("sicog")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sicog"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules}


def graph(top_level_only: bool) -> dict[str, set[str]]:
    return {module_name(p): imports(p, top_level_only) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_no_import_cycles_among_sicog_modules():
    edges = graph(top_level_only=True)
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
               for module, found in graph(top_level_only=False).items() if module.startswith("sicog.model")}
    assert {m: found for m, found in outside.items() if found} == {}


def test_the_record_contract_imports_no_torch():
    modules = sorted(module_name(p) for p in (PACKAGE / "data").glob("*.py"))
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
