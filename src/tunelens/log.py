"""Logging for tunelens: module loggers under ``tunelens``, one rich handler on stderr.

Library code logs through ``get_logger(__name__)`` and never prints
diagnostics; the CLI calls :func:`setup_logging` once: warnings and errors by
default, info with ``--verbose``. Without verbose, the warnings that
transformers prints about itself (deprecations, generation defaults, ...) are
silenced too, so stderr holds what concerns the user's run.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["ROOT", "get_logger", "setup_logging"]

ROOT = "tunelens"
_HANDLER_FLAG = "_tunelens_handler"
# The modules whose Python warnings are filtered without --verbose (a library's
# deprecation notice must not turn a one-line error into five).
_TRANSFORMERS_MODULE = r"(transformers|peft|accelerate|torch|safetensors)(\..*)?$"


def get_logger(name: str) -> logging.Logger:
    """The logger for ``name`` (a module's ``__name__``), always under ``tunelens``."""
    if name != ROOT and not name.startswith(f"{ROOT}."):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


def setup_logging(verbose: bool = False) -> None:
    """Send tunelens' log records to stderr through rich: WARNING and up, INFO with ``verbose``.

    Safe to call more than once (the handler is replaced, not added again).
    Without ``verbose``, transformers' own log messages below ERROR and its
    Python warnings are filtered out.
    """
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.INFO if verbose else logging.WARNING
    logger = logging.getLogger(ROOT)
    for old in [h for h in logger.handlers if getattr(h, _HANDLER_FLAG, False)]:
        logger.removeHandler(old)
    handler = RichHandler(
        console=Console(stderr=True),  # sys.stderr at write time: shows above progress bars
        level=level,
        show_time=verbose,
        show_path=verbose,
        markup=False,
        rich_tracebacks=False,
    )
    setattr(handler, _HANDLER_FLAG, True)
    handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    _filter_transformers(verbose)


def _filter_transformers(verbose: bool) -> None:
    """transformers' logger and warnings: errors only unless ``verbose`` (then its defaults)."""
    if verbose:
        warnings.filterwarnings("default", module=_TRANSFORMERS_MODULE)  # undo a quiet call
        if "transformers" in sys.modules:
            logging.getLogger("transformers").setLevel(logging.WARNING)
        return
    # Read by transformers when it sets up its logger (if it is not imported yet).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=_TRANSFORMERS_MODULE)
