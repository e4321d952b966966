"""Hatchling build hook: ship the stdlib-only start-up hook at the site-packages root.

``yolo_attn.pth`` holds one ``import _yolo_attn_autoload`` line, which Python's ``site`` module runs at every
start-up. Both files must sit at the top of site-packages, for a regular wheel and for an editable install, so the
stock ``yolo`` command sees the blocks without the user importing anything.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class AutoloadHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version, build_data):
        files = {"_yolo_attn_autoload.py": "_yolo_attn_autoload.py", "yolo_attn.pth": "yolo_attn.pth"}
        key = "force_include_editable" if version == "editable" else "force_include"
        build_data.setdefault(key, {}).update(files)
