"""Where the plugin build puts its outputs (shared by the build and the loader, importing neither)."""

from __future__ import annotations

from pathlib import Path

PLUGINS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PLUGINS_DIR.parent
BUILD_DIR = REPO_ROOT / "build" / "plugins"
PLUGIN_LIBRARY = BUILD_DIR / "libmaskrt_plugins.so"
HOST_LIBRARY = BUILD_DIR / "libmaskrt_host.so"
BUILD_COMMAND = "python -m plugins.build"
