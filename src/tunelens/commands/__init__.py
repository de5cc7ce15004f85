"""CLI command groups, one module each; importing this package registers them on ``app``."""

from __future__ import annotations

import importlib
import pkgutil

from tunelens.commands.apps import app

__all__ = ["app"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
