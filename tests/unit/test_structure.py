"""The package's shape (issue 16): import arrows point one way, and no module outgrows a read.

The import graph is read from the source (every ``import`` statement, those inside functions
too, since a lazy import is still an arrow), so the check costs no imports of torch.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "pbu"
MAX_LINES = 600  # "no module in pbu/ is over about 600 lines"


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The pbu modules ``name`` imports; ``from pbu.x import y`` counts as pbu.x.y when y is a
    module, else as pbu.x. Relative imports are resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports_of(n, p, set(mods)) for n, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as the path that closes it (depth-first search)."""
    found, state = [], {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = "open"
        for m in sorted(g.get(n, ())):
            if state.get(m) == "open":
                found.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m, [*stack, m])
        state[n] = "done"

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    return found


def test_the_graph_sees_real_arrows():
    g = graph()
    assert "pbu.metrics.core" in g["pbu.metrics.mia"]
    assert "pbu.metrics" in g["pbu.evaluation"]  # `from pbu import metrics as M`
    assert "pbu.layout" in g["pbu.aggregate"]


def test_cycle_finder_on_a_hand_made_graph():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"a"}}) == [["a", "a"]]


def test_import_arrows_point_one_way():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_600_lines(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines; split it (docs/pipeline.md)"


def docs_map() -> list[str]:
    """The paths listed in the "Where things are" table of docs/pipeline.md, in order."""
    text = (PKG.parent / "docs" / "pipeline.md").read_text()
    section = text.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, re.M)


def test_the_docs_map_matches_the_folders():
    root = PKG.parent
    listed = docs_map()
    files = {p.relative_to(root).as_posix() for p in PKG.rglob("*.py")}
    files |= {p.relative_to(root).as_posix() for p in (root / "workflow" / "rules").glob("*.smk")}
    files.add("Snakefile")
    assert len(listed) == len(set(listed)), "a path listed twice"
    assert not set(listed) - files, f"listed but missing: {sorted(set(listed) - files)}"
    assert not files - set(listed), f"not in docs/pipeline.md's map: {sorted(files - set(listed))}"
