"""CLI command groups, one module each; importing this package registers them on ``app``."""

from __future__ import annotations

import importlib
import pkgutil

from tunelens.options.apps import app, finish_help

__all__ = ["app"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from tunelens.commands.studies import add_experiment_commands  # noqa: E402 - after the modules

add_experiment_commands()
finish_help(app)  # every command's help as paragraphs that rich wraps
