"""The package's shape: imports point one way, the blocks know no tooling, one module reads Ultralytics.

Imports are read from the source (``ast``), function-level ones included, so a cycle hidden in a function body counts
as one. ``importlib.import_module("<literal>")`` counts as an import.
"""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PKG = ROOT / "yolo_attn"
# Modules allowed to import Ultralytics: integration patches it, _compat reads it for everyone else.
ULTRALYTICS_READERS = {"yolo_attn.integration", "yolo_attn._compat"}
# What the blocks may import from the package: the registry, the Ultralytics reads, the integration, each other.
BLOCK_DEPS = {"yolo_attn", "yolo_attn.registry", "yolo_attn._compat", "yolo_attn.integration"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _imported(name: str, path: Path, modules=()) -> set[str]:
    """The modules ``name`` imports (relative imports resolved).

    With ``modules`` (the package's), each import is resolved to the module it names: ``from a import b`` is ``a.b``
    when that is a module, else ``a``; ``import a.b`` is ``a.b``. Parent packages a dotted import initialises on the
    way are not counted (every module would otherwise import ``yolo_attn/__init__``).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            subs = {f"{base}.{a.name}" for a in node.names} & set(modules)
            found |= subs if subs and len(subs) == len(node.names) else {base, *subs}
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Package module -> the package modules it imports."""
    mods = _modules()
    return {name: {m for m in _imported(name, path, mods) if m in mods and m != name} for name, path in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_graph_sees_function_level_imports(graph):
    """The parser is not blind: known imports inside functions appear."""
    assert "yolo_attn.transfer" in graph["yolo_attn.integration"]  # BaseModel.load hook, imported when called
    assert "yolo_attn.report" in graph["yolo_attn.cli"] and "yolo_attn.executors" in graph["yolo_attn.demo"]


def test_import_graph_is_acyclic(graph):
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_blocks_import_no_tooling(graph):
    bad = {
        n: sorted(m for m in deps if m not in BLOCK_DEPS and not m.startswith("yolo_attn.nn"))
        for n, deps in graph.items()
        if n.startswith("yolo_attn.nn")
    }
    bad = {n: deps for n, deps in bad.items() if deps}
    assert not bad, f"yolo_attn/nn must not import tooling modules: {bad}"


def test_only_integration_and_compat_import_ultralytics():
    offenders = {
        name: sorted(m for m in _imported(name, path) if m == "ultralytics" or m.startswith("ultralytics."))
        for name, path in _modules().items()
        if name not in ULTRALYTICS_READERS
    }
    offenders = {n: m for n, m in offenders.items() if m}
    assert not offenders, f"read these through yolo_attn._compat instead: {offenders}"


def test_compat_finds_everything_on_the_installed_ultralytics():
    from yolo_attn import _compat, capture

    missing = _compat.check() + capture.check()  # capture reads through _compat, which cannot import it (layers)
    assert not missing, f"Ultralytics {_compat.version()} lacks what yolo_attn reads from it:\n" + "\n".join(missing)


def test_compat_does_not_need_the_statistics(graph):
    """The layer that reads Ultralytics stays below the statistics; the capture joins the two."""
    assert not {m for m in graph["yolo_attn._compat"] if m.startswith("yolo_attn.stats")}
    assert {"yolo_attn._compat", "yolo_attn.stats.matches"} <= graph["yolo_attn.capture"]
