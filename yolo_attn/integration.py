"""The one module that patches Ultralytics.

The Ultralytics boundary (the same rule opens :mod:`yolo_attn._compat`; ``tests/test_architecture.py`` checks it):

- ``integration`` (this module) INSTALLS: every assignment on an Ultralytics module, class or function, every import
  hook and safe global is made here, and each one is undone by :func:`unregister` (or on leaving its context, for
  :func:`cpu_threads`).
- :mod:`yolo_attn._compat` READS Ultralytics and holds the version shims (``_compat.version()`` is the one version
  function, used here too); it never patches.
- Nothing else in yolo_attn imports ``ultralytics`` (two instance writes, listed in ``_compat``'s docstring and the test).

What it does to ``ultralytics.nn.tasks`` (all reversible by :func:`unregister`, nothing on disk is edited):

1. Puts each registered block class into the module namespace, where ``parse_model`` resolves YAML names
   (``globals()[m]``). Names Ultralytics already defines are never replaced: a collision is an error.
2. Binds the name ``frozenset`` in that namespace to :class:`_SetHook`. ``parse_model`` builds its local
   ``base_modules`` / ``repeat_modules`` sets with ``frozenset({...})`` (Ultralytics >= 8.3.65); a module-level name
   shadows the builtin, so the hook adds our classes to the set that holds ``Conv`` and ``C2f`` (c1 injected, c2
   width-scaled) and, for repeating blocks, to the one that holds ``C2f`` but not ``Conv`` (n passed as third
   argument). Every other call returns exactly what the builtin returns. The previous binding is kept and chained,
   so another plugin doing the same still works.
3. Wraps ``parse_model`` to check YAML rows first (an unknown name gets the row and the closest registered names)
   and to re-raise whatever a row's constructor raises as a ``ValueError`` (``TypeError`` stays) with the row index,
   the row and the block; the ``repeat_modules`` hook refuses rows whose ``n`` copies cannot chain (c1 != c2).
   ``DetectionModel.__init__`` is wrapped the same way for the stride probe (a forward pass while building), so a
   row whose input does not fit its block is named instead of failing deep inside a convolution. It also puts
   ``Conv.default_act`` back afterwards: before 8.4 a YAML's ``activation:`` (e.g. YOLOv6's ReLU) leaked into every
   model built later in the process; newer Ultralytics restores it itself.
4. Wraps ``BaseModel.load`` so checkpoints load into any model YAML through a row alignment
   (:mod:`yolo_attn.transfer`), wherever users pass weights (``.load()``, ``pretrained=``).
5. Wraps ``check_yaml`` so ``YOLO("yolov8n-bot.yaml")`` finds the copy packaged with yolo_attn from any directory.
6. Adds our classes (and the timm layers they hold) to ``torch.serialization``'s safe globals, so checkpoints load
   under ``ULTRALYTICS_SAFE_LOAD=1``.
7. Calls ``_compat.restore_numpy_trapz()`` (numpy >= 2.4 dropped ``trapz``, which Ultralytics 8.3.x's metrics call):
   a shim of numpy, not a patch of Ultralytics, kept in ``_compat`` beside the read that needs it (``ap_tail``).
8. Wraps ``Exporter.__call__`` so the format rules of :mod:`yolo_attn.export` run before any converter: DAT layers
   take the gather sampler for formats without a reliable ``GridSample`` (restored afterwards), and a format that
   cannot take a block is refused with a ``ValueError`` naming the format, the row and the alternative.

Besides, :func:`cpu_threads` holds Ultralytics' ``NUM_THREADS`` (which ``select_device`` applies) at a Ray task's CPUs
for the duration of a run.

After patching, a one-row probe model is built and checked; if the semantics did not take effect (a future
Ultralytics changed ``parse_model``), everything is undone and :class:`IntegrationError` names the version.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from yolo_attn import _compat, registry

__all__ = [
    "register",
    "unregister",
    "registered",
    "is_registered",
    "IntegrationError",
    "cfg_dir",
    "PLUGINS_ENV",
    "install_transfer_hook",
    "uninstall_transfer_hook",
    "transfer_hook_installed",
    "cpu_threads",
]

LOGGER = logging.getLogger("yolo_attn")
PLUGINS_ENV = "YOLO_ATTN_PLUGINS"  # comma-separated modules imported before registering (third-party blocks)
_LOCK = threading.RLock()
_STATE: dict = {"installed": False, "names": {}, "orig": {}, "hook": None}


class IntegrationError(RuntimeError):
    """Ultralytics did not take the registration (unsupported version or a changed ``parse_model``)."""


def _tasks():
    return importlib.import_module("ultralytics.nn.tasks")


def cfg_dir() -> Path:
    """Folder of the model YAMLs shipped with yolo_attn (wheel: ``yolo_attn/cfg``; source checkout: ``cfg/``)."""
    here = Path(__file__).resolve().parent
    packaged = here / "cfg"
    return packaged if packaged.is_dir() else here.parent / "cfg"


class _SetHook:
    """Stands in for ``frozenset`` inside ``ultralytics.nn.tasks``; see the module docstring."""

    def __init__(self, prev):
        self.prev = prev  # builtin frozenset or an earlier hook: chained, never dropped
        self.active = True

    def __call__(self, *args):
        s = self.prev(*args)
        if not (self.active and args):
            return s
        tasks = _tasks()
        conv, c2f = getattr(tasks, "Conv", None), getattr(tasks, "C2f", None)
        if c2f is None or c2f not in s:
            return s
        specs = registry.specs()
        if conv in s:  # base_modules: (c1, width-scaled c2, *args)
            return s | {sp.cls for sp in specs}
        # repeat_modules: n as the third argument. parse_model asks it right after building (c1, c2, *extras) for a
        # base module, which is where a row that cannot chain is caught (see _RepeatSet).
        return _RepeatSet(s | {sp.cls for sp in specs if sp.repeats})


class _RepeatSet(frozenset):
    """``repeat_modules`` that also refuses rows whose copies cannot chain, while ``parse_model`` builds them.

    A base module that does not repeat is stacked ``n`` times by ``parse_model`` as ``n`` copies built with the same
    ``(c1, c2, ...)``; with ``c1 != c2`` the second copy expects ``c1`` channels but receives ``c2``, and the model
    fails later on the stride probe with a convolution error from deep inside the block. ``parse_model`` asks
    ``m in repeat_modules`` right after computing those arguments, so this membership test reads them from its frame
    (``args``, ``n``) and raises a ``ValueError`` that the ``parse_model`` wrapper prefixes with the row.
    """

    def __contains__(self, m) -> bool:
        found = frozenset.__contains__(self, m)
        if not found:
            frame = sys._getframe(1)
            args, n = frame.f_locals.get("args"), frame.f_locals.get("n")
            if (
                isinstance(n, int)
                and n > 1
                and isinstance(args, list)
                and len(args) >= 2
                and all(isinstance(a, int) and not isinstance(a, bool) for a in args[:2])
                and args[0] != args[1]
            ):
                raise ValueError(_chain_message(m, args[0], args[1], n))
        return found


def _chain_message(m, c1: int, c2: int, n: int) -> str:
    name = getattr(m, "__name__", str(m))
    spec = next((sp for sp in registry.specs() if sp.cls is m), None)
    family = spec.family if spec is not None else None
    csp = [sp.name for sp in registry.specs() if family and sp.family == family and sp.repeats]
    fix = f"use n=1 (one {name}), or a block that repeats internally"
    fix += (
        f" ({' or '.join(csp)} for this family)" if csp else " (C2f, C3k2, or a yolo_attn CSP block: BoT3, DAT3, CoAt3)"
    )
    return (
        f"{name} does not repeat itself, so n={n} builds {n} copies in a row, each taking c1={c1} input channels, but "
        f"every copy outputs c2={c2} channels and the second one would receive {c2}; {fix}, or make c2 equal the "
        f"input's {c1} channels"
    )


def _yaml_rows(d: dict) -> list:
    return list(d.get("backbone") or []) + list(d.get("head") or [])


def _where(d: dict) -> str:
    return f"model YAML {d.get('yaml_file', '<dict>')}"


#: Largest YAML ``repeats`` accepted. Ultralytics takes any number, and 10**9 copies of a block would hang the build
#: and exhaust memory instead of failing; real models repeat a block a handful of times.
MAX_REPEATS = 1000


def _check_rows(d: dict) -> None:
    """Fail early, with the row, on what ``parse_model`` would turn into a cryptic error or a hang."""
    ns = vars(_tasks())
    ours = {sp.name for sp in registry.specs()}
    for i, row in enumerate(_yaml_rows(d)):
        if not (isinstance(row, (list, tuple)) and len(row) == 4):
            raise ValueError(f"{_where(d)}: row {i} {row!r} must be [from, repeats, module, args]")
        f, n, m, args = row
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 < n <= MAX_REPEATS:
            raise ValueError(
                f"{_where(d)}: row {i} {row!r}: repeats={n!r} must be a number from 1 to {MAX_REPEATS} (the second "
                "entry of a row: how many times the block is repeated before depth scaling)"
            )
        if not isinstance(args, (list, tuple)):
            raise ValueError(f"{_where(d)}: row {i} {row!r}: the arguments (last entry of the row) must be a list")
        if m in ours and (not args or isinstance(args[0], bool) or not isinstance(args[0], (int, str))):
            raise ValueError(
                f"{_where(d)}: row {i} {row!r}: {m} takes [c2, ...extras] with c2 its output channels (an integer, "
                f"width-scaled like C2f's); got {list(args)!r}"
            )
        if not isinstance(m, str) or m.startswith(("nn.", "torchvision.ops.")) or m in ns:
            continue
        names = registry.block_names()
        theirs = [k for k, v in ns.items() if isinstance(v, type) and not k.startswith("_")]
        hint = registry.closest(m, names + theirs)
        raise ValueError(
            f"{_where(d)}: row {i} {row!r}: unknown block {m!r}."
            + (f" Did you mean {' or '.join(hint)}?" if hint else "")
            + f" Blocks registered by yolo_attn: {', '.join(names) or 'none'}."
            + ("" if _STATE["installed"] else " (yolo_attn is not registered: call yolo_attn.register())")
        )


def _failing_row(tb, code) -> int | None:
    """Row index ``i`` of the ``parse_model`` frame in a traceback (None if not found)."""
    while tb is not None:
        if tb.tb_frame.f_code is code:
            i = tb.tb_frame.f_locals.get("i")
            return i if isinstance(i, int) else None
        tb = tb.tb_next
    return None


def _row_error(d: dict, i: int, e: Exception, hint: str = "") -> Exception:
    """``e`` as a ValueError (TypeError and ValueError keep their type) that names the YAML row and the block.

    Whatever a block's constructor or a layer raises (IndexError, ZeroDivisionError, a RuntimeError from torch)
    becomes an error about the user's input: the row is what they can change.
    """
    rows = _yaml_rows(d)
    name = rows[i][2] if isinstance(rows[i], (list, tuple)) and len(rows[i]) > 2 else "?"
    what = str(e) if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: {e}"
    cls = type(e) if isinstance(e, (ValueError, TypeError)) else ValueError
    try:
        err = cls(f"{_where(d)}: row {i} {rows[i]!r}: {name}: {what}{hint}")
    except TypeError:  # an exception class with a custom signature
        err = ValueError(f"{_where(d)}: row {i} {rows[i]!r}: {name}: {what}{hint}")
    err._yolo_attn_row = True
    return err


def _hint(row, e: Exception) -> str:
    """What to do about the commonest mistakes Ultralytics reports without context."""
    args = row[3] if isinstance(row, (list, tuple)) and len(row) > 3 else None
    if isinstance(e, IndexError) and isinstance(args, (list, tuple)) and not args:
        return " (the argument list is empty: give at least the output channels, [c2, ...])"
    if isinstance(e, IndexError) and "list index out of range" in str(e):
        return " (a 'from' index or an argument refers to something that does not exist)"
    return ""


def _wrap_parse_model(orig):
    @functools.wraps(orig)
    def parse_model(d, ch, verbose=True):
        with _LOCK:  # blocks registered after register() (e.g. a module still importing then) become visible here
            _inject_names(_tasks())
        _check_rows(d)
        conv = getattr(_tasks(), "Conv", None)
        default_act = getattr(conv, "default_act", None)
        try:
            return orig(d, ch, verbose)
        except Exception as e:
            i = _failing_row(e.__traceback__, orig.__code__)
            rows = _yaml_rows(d)
            if i is None or i >= len(rows) or getattr(e, "_yolo_attn_row", False):
                raise
            raise _row_error(d, i, e, _hint(rows[i], e)) from e
        finally:
            if default_act is not None:
                conv.default_act = default_act  # a YAML's ``activation:`` is that model's, not the process's

    parse_model._yolo_attn_orig = orig
    return parse_model


def _probe_failure(tb) -> tuple[int, str] | None:
    """(row index, module type) of the layer that was running in ``BaseModel._predict_once`` when ``tb`` was raised."""
    found = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_predict_once":
            m = tb.tb_frame.f_locals.get("m")
            if isinstance(getattr(m, "i", None), int):
                found = (m.i, getattr(m, "type", type(m).__name__))
        tb = tb.tb_next
    return found


def _wrap_model_init(orig):
    """``DetectionModel.__init__`` (and the task models built on it): a layer failing on the stride probe names its row.

    The probe is a forward pass Ultralytics runs while building the model. A row whose input does not fit it
    (channels, a ``from`` index pointing at another scale) fails there with an error from deep inside a layer; this
    re-raises it as a ``ValueError`` naming the row, the block and what to check.
    """

    @functools.wraps(orig)
    def __init__(self, *args, **kwargs):
        try:
            orig(self, *args, **kwargs)
        except Exception as e:
            if getattr(e, "_yolo_attn_row", False):
                raise
            hit = _probe_failure(e.__traceback__)
            d = getattr(self, "yaml", None)
            if hit is None or not isinstance(d, dict) or not 0 <= hit[0] < len(_yaml_rows(d)):
                raise
            hint = (
                " (raised by the forward pass Ultralytics runs while building the model: the row's input does not fit "
                "the block; check its 'from' index, that the inputs of a Concat have the same size, and the block's "
                "arguments)"
            )
            raise _row_error(d, hit[0], e, hint) from e

    __init__._yolo_attn_orig = orig
    return __init__


def _wrap_check_yaml(orig):
    @functools.wraps(orig)
    def check_yaml(file="", suffix=(".yaml", ".yml"), hard=True):
        with contextlib.suppress(Exception):
            found = orig(file, suffix=suffix, hard=False)
            if found:
                return found
        # Only the final (hard) lookup falls back to our packaged copies, so a user's local file always wins whatever
        # order Ultralytics tries the scaled and unscaled names in (8.4: "yolov8n-x" first; 8.3.65: "yolov8-x" first).
        if hard:
            name = Path(str(file)).name
            for candidate in (name, re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", name)):
                packaged = cfg_dir() / candidate
                if packaged.is_file():
                    return str(packaged)
        return orig(file, suffix=suffix, hard=hard)

    check_yaml._yolo_attn_orig = orig
    return check_yaml


def _safe_globals() -> list[type | tuple[type, str]]:
    """Registered block classes, every nn.Module class their modules name, and timm's layer classes.

    A pickled block holds whatever classes its layers are built from, including ones no module of ours names:
    timm's ``SEModule`` creates its gate through ``create_act_layer("sigmoid")``, a ``timm.layers.activations.Sigmoid``.
    So every ``nn.Module`` class of the loaded ``timm.layers`` modules is allowed too (layers, not code that runs on
    unpickling). Classes that moved keep their old path too (``(class, "old.module.Name")``: the path a checkpoint
    pickled before the move names them by; see :data:`yolo_attn.nn.attention.LEGACY_PATHS`).
    """
    import torch

    found = {sp.cls for sp in registry.specs()}
    mods = {sys.modules.get(c.__module__) for c in found}
    mods |= {m for name, m in list(sys.modules.items()) if name == "timm.layers" or name.startswith("timm.layers.")}
    for mod in mods:
        for obj in vars(mod).values() if mod else ():
            if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and not obj.__module__.startswith("torch."):
                found.add(obj)
    legacy = getattr(sys.modules.get("yolo_attn.nn.attention"), "LEGACY_PATHS", {})
    moved = [(cls, path) for path, cls in sorted(legacy.items()) if cls in found]
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__)) + moved


def _import_plugins() -> None:
    import yolo_attn.nn  # noqa: F401  (registers the package's blocks)

    for name in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(name)


def _inject_names(tasks) -> None:
    ns = vars(tasks)
    for sp in registry.specs():
        current = ns.get(sp.name)
        if current is sp.cls:
            _STATE["names"][sp.name] = sp.cls
            continue
        if current is not None and _STATE["names"].get(sp.name) is not current:
            raise IntegrationError(
                f"block name {sp.name!r} is already defined by Ultralytics {_compat.version()} "
                f"({getattr(current, '__module__', '?')}); yolo_attn never replaces it. Register the block under "
                "another name."
            )
        setattr(tasks, sp.name, sp.cls)
        _STATE["names"][sp.name] = sp.cls
    for name in [n for n in _STATE["names"] if n not in {sp.name for sp in registry.specs()}]:
        if ns.get(name) is _STATE["names"][name]:  # unregistered since the last call
            delattr(tasks, name)
        del _STATE["names"][name]


def _probe(tasks) -> None:
    """Build a two-row model and check our blocks got (c1, scaled c2, n) exactly as C2f/Conv would."""
    import torch

    seen = []

    class _YoloAttnProbeRep(torch.nn.Module):
        def __init__(self, c1, c2, n=1):
            super().__init__()
            seen.append(("rep", c1, c2, n))
            self.cv = torch.nn.Conv2d(c1, c2, 1)

        def forward(self, x):
            return self.cv(x)

    class _YoloAttnProbeOne(_YoloAttnProbeRep):
        def __init__(self, c1, c2):
            super().__init__(c1, c2)
            seen[-1] = ("one", c1, c2)

    probes = [(_YoloAttnProbeRep, True), (_YoloAttnProbeOne, False)]
    for cls, rep in probes:
        registry.register_block(cls, repeats=rep)
    try:
        _inject_names(tasks)
        d = {
            "nc": 1,
            "scales": {"p": [0.5, 0.5, 48]},
            "scale": "p",
            "backbone": [[-1, 4, "_YoloAttnProbeRep", [128]], [-1, 4, "_YoloAttnProbeOne", [48]]],
            "head": [],
            "yaml_file": "<yolo_attn probe>",
        }
        tasks.parse_model(d, ch=3, verbose=False)
    except Exception as e:
        raise IntegrationError(
            f"yolo_attn could not register with Ultralytics {_compat.version()}: the probe model failed to build "
            f"({type(e).__name__}: {e}). Supported: ultralytics>=8.3.65,<8.5."
        ) from e
    finally:
        for cls, _ in probes:
            registry.unregister_block(cls.__name__)
        _inject_names(tasks)
    # width 0.5, max_channels 48, depth 0.5: C2f semantics give c2 = make_divisible(min(128, 48) * 0.5, 8) = 24
    # and n = round(4 * 0.5) = 2 passed as argument; a non-repeating block is stacked twice with (24, 24).
    expected = [("rep", 3, 24, 2), ("one", 24, 24), ("one", 24, 24)]
    if seen != expected:
        raise IntegrationError(
            f"yolo_attn could not register with Ultralytics {_compat.version()}: parse_model did not apply the "
            f"built-in row semantics to a probe block (got constructor calls {seen}, expected {expected}). "
            "Supported: ultralytics>=8.3.65,<8.5."
        )


def register(verbose: bool = False) -> None:
    """Make every registered block usable in Ultralytics model YAMLs. Idempotent; undo with :func:`unregister`.

    Raises:
        IntegrationError: Ultralytics did not take the registration; nothing is left patched.
    """
    with _LOCK:
        _import_plugins()
        tasks = _tasks()
        fresh = not _STATE["installed"]
        try:
            if fresh:
                prev = vars(tasks).get("frozenset", frozenset)
                hook = _SetHook(prev)
                _STATE["hook"] = hook
                _STATE["orig"] = {
                    "parse_model": tasks.parse_model,
                    "check_yaml": tasks.check_yaml,
                    "frozenset": prev,
                    "model_init": tasks.DetectionModel.__dict__["__init__"],
                }
                tasks.frozenset = hook
                tasks.parse_model = _wrap_parse_model(tasks.parse_model)
                tasks.check_yaml = _wrap_check_yaml(tasks.check_yaml)
                tasks.DetectionModel.__init__ = _wrap_model_init(_STATE["orig"]["model_init"])
                _STATE["installed"] = True
            _inject_names(tasks)
            if fresh:
                _probe(tasks)
                install_transfer_hook()
                _install_export_hook()
                _compat.restore_numpy_trapz()
        except Exception:
            unregister()
            raise
        import torch

        if hasattr(torch.serialization, "add_safe_globals"):
            torch.serialization.add_safe_globals(_safe_globals())
        if verbose:
            LOGGER.info(f"yolo_attn: registered {', '.join(registry.block_names())}")


def unregister() -> None:
    """Undo :func:`register`: remove injected names and restore the patched functions."""
    with _LOCK:
        if not _STATE["installed"]:
            return
        tasks = _tasks()
        for name, cls in list(_STATE["names"].items()):
            if vars(tasks).get(name) is cls:
                delattr(tasks, name)
        _STATE["names"].clear()
        hook, orig = _STATE["hook"], _STATE["orig"]
        if vars(tasks).get("frozenset") is hook:
            if orig["frozenset"] is frozenset:
                del tasks.frozenset
            else:
                tasks.frozenset = orig["frozenset"]
        else:  # someone chained on top of us: stay in the chain as a pass-through
            hook.active = False
        uninstall_transfer_hook()
        _uninstall_export_hook()
        for attr in ("parse_model", "check_yaml"):
            if getattr(getattr(tasks, attr), "_yolo_attn_orig", None) is orig[attr]:
                setattr(tasks, attr, orig[attr])
        init = tasks.DetectionModel.__dict__.get("__init__")
        if "model_init" in orig and getattr(init, "_yolo_attn_orig", None) is orig["model_init"]:
            tasks.DetectionModel.__init__ = orig["model_init"]
        _STATE.update(installed=False, hook=None, orig={})


def is_registered() -> bool:
    return _STATE["installed"]


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """``with registered(): ...`` registers for the block and restores the previous state after."""
    was = is_registered()
    register()
    try:
        yield
    finally:
        if not was:
            unregister()


# --- weight transfer: BaseModel.load re-indexes its input first --------------------------------------------------
# Every way users pass pretrained weights ends in ``BaseModel.load(weights)``: ``YOLO(variant).load("yolov8n.pt")``,
# ``yolo train model=<variant>.yaml pretrained=yolov8n.pt`` and ``model.train(pretrained=...)`` (8.3.65 and 8.4
# alike). The load goes through :func:`yolo_attn.transfer.load_aligned`: the checkpoint's rows are aligned with the
# model's (no record needed), Ultralytics' own name-and-shape match runs on the re-indexed checkpoint as usual, and one
# line says what arrived.
_TRANSFER = {"active": False}


def _base_model():
    return _tasks().BaseModel


def install_transfer_hook() -> None:
    """Wrap ``BaseModel.load`` (idempotent)."""
    cls = _base_model()
    current = cls.__dict__["load"]
    _TRANSFER["active"] = True
    if getattr(current, "_yolo_attn_orig", None) is not None:
        return

    @functools.wraps(current)
    def load(self, weights, *args, **kwargs):
        if _TRANSFER["active"]:
            from yolo_attn.transfer import load_aligned

            verbose = kwargs.get("verbose", args[0] if args else True)
            return load_aligned(self, weights, lambda w: current(self, w, *args, **kwargs), verbose=verbose)
        return current(self, weights, *args, **kwargs)

    load._yolo_attn_orig = current
    cls.load = load


def uninstall_transfer_hook() -> None:
    """Restore ``BaseModel.load`` (when someone wrapped it after us, our wrapper stays as a pass-through)."""
    _TRANSFER["active"] = False
    cls = _base_model()
    orig = getattr(cls.__dict__["load"], "_yolo_attn_orig", None)
    if orig is not None:
        cls.load = orig


def transfer_hook_installed() -> bool:
    return _TRANSFER["active"] and getattr(_base_model().__dict__["load"], "_yolo_attn_orig", None) is not None


# --- export: the format rules run before Ultralytics converts anything -------------------------------------------
# ``Exporter.__call__(model)`` is where every export starts (``model.export(...)``, ``yolo export``), on 8.3.65 and
# 8.4 alike, with ``self.args.format`` and ``self.args.opset`` as the user gave them.
_EXPORTER = "ultralytics.engine.exporter"


def _exporter_class():
    return importlib.import_module(_EXPORTER).Exporter


class _AfterImport:
    """One-shot meta-path finder: runs ``callback(module)`` right after module ``name`` has executed.

    The exporter is imported lazily by ``Model.export``; importing it ourselves while ``ultralytics`` is still
    initialising (the start-up hook registers from inside that import) fails on 8.3.65 with a circular import.
    """

    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            self.callback(module)

        try:
            loader.exec_module = exec_then_patch  # this loader instance serves this one import only
        except Exception:  # a loader that does not take attributes: that import is left unpatched
            return spec
        return spec


def _install_export_hook() -> None:
    """Wrap ``Exporter.__call__`` now if the exporter is imported, else as soon as it is (idempotent)."""
    mod = sys.modules.get(_EXPORTER)
    if mod is None:
        if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport(_EXPORTER, _wrap_exporter))
        return
    _wrap_exporter(mod)


def _wrap_exporter(mod) -> None:
    cls = getattr(mod, "Exporter", None)
    current = getattr(cls, "__dict__", {}).get("__call__")
    if current is None or getattr(current, "_yolo_attn_orig", None) is not None or not _STATE["installed"]:
        return

    @functools.wraps(current)
    def __call__(self, model=None, *args, **kwargs):
        from yolo_attn.export import prepared_for_export

        target = model if model is not None else getattr(self, "model", None)
        if target is None:
            return current(self, model, *args, **kwargs)
        fmt = str(getattr(self.args, "format", "") or "")
        with prepared_for_export(target, fmt, getattr(self.args, "opset", None)):
            return current(self, model, *args, **kwargs)

    __call__._yolo_attn_orig = current
    cls.__call__ = __call__


def _uninstall_export_hook() -> None:
    """Restore ``Exporter.__call__`` (or drop the pending hook)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterImport)]
    cls = getattr(sys.modules.get(_EXPORTER), "Exporter", None)
    orig = getattr(getattr(cls, "__dict__", {}).get("__call__"), "_yolo_attn_orig", None)
    if orig is not None:
        cls.__call__ = orig


# --- threads: Ultralytics' select_device applies NUM_THREADS -------------------------------------------------------
@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch's CPU threads at ``n`` inside the block, also through Ultralytics' ``select_device``.

    ``select_device`` sets ``torch.set_num_threads(NUM_THREADS)`` for CPU training, ``NUM_THREADS`` being
    min(8, the machine's CPUs - 1) whatever share of the machine the process was given (a Ray task's CPUs): the
    module's copy of that constant is set to ``n`` too, and both are restored on leaving.
    """
    import torch

    if n < 1:
        raise ValueError(f"cpu_threads needs n >= 1, got {n}")
    tu = importlib.import_module("ultralytics.utils.torch_utils")
    if not hasattr(tu, "NUM_THREADS"):
        raise ImportError(
            f"yolo_attn needs ultralytics.utils.torch_utils.NUM_THREADS, which the installed Ultralytics "
            f"{_compat.version()} does not provide; supported: {_compat.SUPPORTED}"
        )
    before = tu.NUM_THREADS, torch.get_num_threads()
    tu.NUM_THREADS = n
    torch.set_num_threads(n)
    try:
        yield
    finally:
        tu.NUM_THREADS = before[0]
        torch.set_num_threads(before[1])
