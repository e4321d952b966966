"""Start-up hook of yolo_attn (stdlib only), imported by ``yolo_attn.pth`` in site-packages.

It installs a run-once import finder: when ``ultralytics.nn.tasks`` has finished importing, it calls
``yolo_attn.register()``, so the stock ``yolo`` CLI (and DDP worker processes, which start a fresh interpreter) know
the blocks without any user import. It imports nothing heavy at start-up, never raises (a failure is one warning
line on stderr) and is switched off by ``YOLO_ATTN_AUTOLOAD=0``.
"""

import os
import sys

_TARGET = "ultralytics.nn.tasks"


def _register():
    try:
        import yolo_attn

        yolo_attn.register()
    except Exception as e:  # never break the host program
        sys.stderr.write(f"WARNING yolo_attn: blocks not registered ({type(e).__name__}: {e})\n")


class _Finder:
    """Meta-path finder that only watches for ultralytics.nn.tasks and wraps its loader."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # run once
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        try:
            loader.exec_module = exec_then_register  # this loader instance serves this one import only
        except Exception:
            pass
        return spec


if os.environ.get("YOLO_ATTN_AUTOLOAD", "1").lower() not in {"0", "false", "no", "off"} and not any(
    isinstance(f, _Finder) or type(f).__name__ == "_Finder" for f in sys.meta_path
):
    if _TARGET in sys.modules:  # already imported (e.g. this module imported late): register now
        _register()
    else:
        sys.meta_path.insert(0, _Finder())
