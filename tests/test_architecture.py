"""The package's shape: imports point one way, the blocks know no tooling, one Ultralytics boundary.

The boundary (stated at the top of ``yolo_attn/integration.py`` and ``yolo_attn/_compat.py``): ``integration``
installs every patch and hook, ``_compat`` reads Ultralytics and holds the version shims without patching anything,
and no other module imports ``ultralytics``.

Imports are read from the source (``ast``), function-level ones included, so a cycle hidden in a function body counts
as one. ``importlib.import_module("<literal>")`` counts as an import.
"""

import ast
import re
from pathlib import Path

import pytest
from conftest import ROOT

PKG = ROOT / "yolo_attn"
# The one module that patches Ultralytics, and the modules allowed to import it: integration, and _compat that reads it
# for everyone else (yolo_attn.capture reads the validator through _compat too).
PATCHER = "yolo_attn.integration"
ULTRALYTICS_READERS = {PATCHER, "yolo_attn._compat"}
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


# ------------------------------------------------------------------------------------------ who patches Ultralytics
def _from_ultralytics(node: ast.AST, tracked: set[str]) -> bool:
    """``node`` reaches an Ultralytics object: a tracked name, ``importlib.import_module("ultralytics...")``,
    ``sys.modules[...]`` / ``sys.modules.get(...)`` of an Ultralytics module, or an attribute / call / item of one."""
    while True:
        if isinstance(node, ast.Name):
            return node.id in tracked
        if isinstance(node, ast.Call):
            f, args = node.func, node.args
            literal = args and isinstance(args[0], ast.Constant) and str(args[0].value).startswith("ultralytics")
            if isinstance(f, ast.Attribute) and f.attr in ("import_module", "get") and literal:
                return True
            node = f
        elif isinstance(node, ast.Subscript):
            s = node.slice
            if isinstance(s, ast.Constant) and str(s.value).startswith("ultralytics"):
                return True
            node = node.value
        elif isinstance(node, ast.Attribute):
            node = node.value
        else:
            return False


def _root(node: ast.AST) -> str:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return getattr(node, "id", "?")


def ultralytics_writes(source: str) -> list[str]:
    """Attribute writes on Ultralytics objects in ``source``: ``x.a = v``, ``x.a += v``, ``del x.a``, ``setattr(x, ..)``
    and ``delattr(x, ..)`` where ``x`` reaches Ultralytics (see :func:`_from_ultralytics`).

    Names are tracked through the module (scopes are not told apart, which can only over-report): bound by an import of
    ``ultralytics...`` or of ``yolo_attn._compat`` (whose names are Ultralytics' objects), assigned from an expression
    that reaches Ultralytics, or the result of a function of the module that returns one.
    """
    tree = ast.parse(source)
    tracked: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tracked |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("ultralytics")}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod.startswith("ultralytics") or mod == "yolo_attn._compat":
                tracked |= {a.asname or a.name for a in node.names}
            elif mod == "yolo_attn":
                tracked |= {a.asname or a.name for a in node.names if a.name == "_compat"}
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assigns = [n for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.NamedExpr))]
    while True:  # to a fixed point: aliases of aliases, functions returning them
        before = len(tracked)
        for n in assigns:
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            if n.value is not None and _from_ultralytics(n.value, tracked):
                tracked |= {t.id for t in targets if isinstance(t, ast.Name)}
        for f in funcs:
            if any(isinstance(r, ast.Return) and r.value is not None and _from_ultralytics(r.value, tracked)
                   for r in ast.walk(f)):  # fmt: skip
                tracked.add(f.name)
        if len(tracked) == before:
            break
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            for el in t.elts if isinstance(t, ast.Tuple) else [t]:
                if isinstance(el, ast.Attribute) and _from_ultralytics(el.value, tracked):
                    found.append(f"{_root(el.value)}.{el.attr}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
            and node.args
            and _from_ultralytics(node.args[0], tracked)
        ):
            found.append(f"{node.func.id}({_root(node.args[0])})")
    return sorted(set(found))


def test_the_patch_finder_is_not_blind():
    """It sees integration's own patches, a class imported from _compat being patched, and leaves plain code alone."""
    seen = ultralytics_writes((PKG / "integration.py").read_text())
    assert {"tasks.frozenset", "tasks.parse_model", "cls.load", "cls.__call__", "tu.NUM_THREADS"} <= set(seen), seen
    assert "setattr(tasks)" in seen and "delattr(tasks)" in seen
    snippet = (
        "from yolo_attn._compat import Conv\nfrom yolo_attn import _compat\nimport importlib\n"
        "def tu():\n    return importlib.import_module('ultralytics.utils.torch_utils')\n"
        "def f(rec):\n    Conv.default_act = None\n    m = _compat.model_class('detect')\n    m.yaml = {}\n"
        "    t = tu()\n    t.NUM_THREADS += 1\n    rec.log = 'x'\n    setattr(rec, 'a', 1)\n"
    )
    assert ultralytics_writes(snippet) == ["Conv.default_act", "m.yaml", "t.NUM_THREADS"]


#: Writes on Ultralytics *instances* that this package creates or is handed, never on a module, class or function:
#: the capture wraps ``update_metrics`` of the one validator Ultralytics passes to its ``on_val_start`` callback; the
#: psa family builds a ``C2PSA`` and gives it blocks with explicit head counts (8.3's rule gives 0 heads below 64
#: channels). Nothing else may appear here.
INSTANCE_WRITES = {"yolo_attn.capture": ["validator.update_metrics"], "yolo_attn.nn.psa": ["m.m"]}


def test_only_integration_patches_ultralytics():
    """No module but integration assigns or deletes an attribute of an Ultralytics module, class or object it imported
    (``_compat`` reads; a patch there would be invisible to ``unregister``), except the instance writes listed above."""
    found = {
        name: writes
        for name, path in _modules().items()
        if name != PATCHER and (writes := ultralytics_writes(path.read_text())) and writes != INSTANCE_WRITES.get(name)
    }
    assert not found, f"only {PATCHER} may patch Ultralytics (and undo it in unregister): {found}"


def test_only_integration_installs_hooks():
    """Import hooks (``sys.meta_path``) and restricted-loading allowances (``add_safe_globals``) are installed by
    integration alone."""
    found = {}
    for name, path in _modules().items():
        if name == PATCHER:
            continue
        tree = ast.parse(path.read_text())
        hits = [
            ast.unparse(n)
            for n in ast.walk(tree)
            if (isinstance(n, ast.Attribute) and n.attr in ("meta_path", "add_safe_globals"))
            or (isinstance(n, ast.Name) and n.id == "add_safe_globals")
        ]
        if hits:
            found[name] = hits
    assert not found, f"only {PATCHER} installs hooks: {found}"


def test_one_ultralytics_version_function():
    """``_compat.version()`` is the one: no other module reads ``ultralytics.__version__`` or its distribution's
    version (the Ray node check runs where yolo_attn may be missing and asks the metadata itself)."""
    allowed = {"yolo_attn._compat"}
    found = {}
    for name, path in _modules().items():
        src = path.read_text()
        if name not in allowed and ('version("ultralytics")' in src or "ultralytics.__version__" in src):
            found[name] = True
    assert not found, f"use yolo_attn._compat.version(): {sorted(found)}"


def test_versions_are_collected_in_one_place():
    """``execute.versions()`` collects the versions a result depends on; the GPU check and the Ray executor use it."""
    found = sorted(
        name
        for name, path in _modules().items()
        if name != "yolo_attn.execute" and re.search(r"torch\.__version__|platform\.python_version", path.read_text())
    )
    assert not found, f"use yolo_attn.execute.versions(): {found}"
