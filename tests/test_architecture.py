"""The house rules of docs/architecture.md, checked on the source: imports point downward, no import circle
(function-level imports included), few modules at the top of the package, optional extras stay optional."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "rewardkit"

# What each part may import from rewardkit (a module's own folder is always allowed). Parts are matched by
# the longest prefix. `cli` is the top and may import anything.
ALLOWED: dict[str, set[str]] = {
    "rewardkit.batches": set(),
    "rewardkit.config": set(),
    "rewardkit.io": set(),
    "rewardkit.losses": set(),
    "rewardkit.metrics": set(),
    "rewardkit.rlhf": set(),
    "rewardkit.precision": set(),
    "rewardkit.data": {"rewardkit.batches", "rewardkit.config", "rewardkit.io"},
    "rewardkit.models": {"rewardkit.batches", "rewardkit.io", "rewardkit.losses", "rewardkit.metrics"},
    "rewardkit.scoring": {"rewardkit.precision", "rewardkit.batches", "rewardkit.config", "rewardkit.data", "rewardkit.metrics",
                          "rewardkit.models"},
    "rewardkit.objectives": {"rewardkit.batches", "rewardkit.config", "rewardkit.data", "rewardkit.losses",
                             "rewardkit.metrics", "rewardkit.models", "rewardkit.scoring"},
    "rewardkit.train": {"rewardkit.precision", "rewardkit.batches", "rewardkit.config", "rewardkit.data", "rewardkit.io",
                        "rewardkit.losses", "rewardkit.metrics", "rewardkit.models", "rewardkit.objectives",
                        "rewardkit.scoring"},
    "rewardkit.eval": {"rewardkit.precision", "rewardkit", "rewardkit.batches", "rewardkit.config", "rewardkit.data", "rewardkit.io",
                       "rewardkit.metrics", "rewardkit.models", "rewardkit.scoring"},
    "rewardkit.apps": {"rewardkit.config", "rewardkit.data", "rewardkit.io", "rewardkit.metrics",
                       "rewardkit.scoring"},
    "rewardkit.serve": {"rewardkit.precision", "rewardkit.config", "rewardkit.data", "rewardkit.metrics", "rewardkit.rlhf",
                        "rewardkit.scoring"},
}
TOP = {"rewardkit.cli", "rewardkit.cli.allocator", "rewardkit.cli.parser", "rewardkit.cli.run", "rewardkit.cli.__main__",
       "rewardkit.__main__", "rewardkit"}  # may import anything


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").exists() or (SRC / rel / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """rewardkit modules `path` imports anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("rewardkit"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rewardkit"):
            for a in node.names:  # `from rewardkit.data import fields` imports the module rewardkit.data.fields
                sub = f"{node.module}.{a.name}"
                out.add(sub if _is_module(sub) else node.module)
    return out


GRAPH = {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def _part(name: str) -> str | None:
    return max((p for p in ALLOWED if name == p or name.startswith(p + ".")), key=len, default=None)


def test_imports_point_downward():
    bad = []
    for mod, deps in sorted(GRAPH.items()):
        if mod in TOP:
            continue
        part = _part(mod)
        assert part is not None, f"{mod} is in no part of the house: add it to ALLOWED (and docs/architecture.md)"
        for dep in deps:
            dep_part = _part(dep) or dep
            if dep_part != part and dep_part not in ALLOWED[part] and dep not in ALLOWED[part]:
                bad.append(f"{mod} imports {dep}")
    assert not bad, "imports against the house rules:\n" + "\n".join(bad)


def test_no_import_circle():
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    # A package __init__ that re-exports its own submodules is not a circle anyone can trip over.
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, f"import circles: {cycles}"


def test_few_modules_at_the_top():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 12, top


def test_models_never_import_data_and_objectives_never_import_eval():
    for mod, deps in GRAPH.items():
        if mod.startswith("rewardkit.models"):
            assert not any(d.startswith("rewardkit.data") for d in deps), mod
        if mod.startswith("rewardkit.objectives"):
            assert not any(d.startswith("rewardkit.eval") for d in deps), mod


@pytest.mark.parametrize("module", ["rewardkit", "rewardkit.cli", "rewardkit.serve"])
def test_light_imports_stay_light(module):
    """Importing the package, the CLI or the serve package loads neither torch nor any optional extra."""
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'fastapi', 'matplotlib', 'peft', 'uvicorn') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_test_files_have_unique_names():
    """Test folders have no __init__.py, so pytest imports test files by basename: two alike fail collection."""
    names = [p.name for p in (SRC.parent / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
