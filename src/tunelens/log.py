"""Logging for tunelens: module loggers under ``tunelens``, one rich handler on stderr.

Library code logs through ``get_logger(__name__)`` and never prints
diagnostics; the CLI calls :func:`setup_logging` once: warnings and errors by
default, info with ``--verbose``. Without verbose, Python warnings are silenced
(tunelens never speaks through them: its own warnings are log records and
``warning:`` lines): numpy's and scipy's ``RuntimeWarning`` and
``DegenerateDataWarning`` on a degenerate bootstrap, transformers' and peft's
deprecations and generation defaults. transformers' own log messages below
ERROR go too. So stderr holds what concerns the user's run; ``--verbose``
shows them all.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["ROOT", "get_logger", "logging_verbosity", "setup_logging"]

ROOT = "tunelens"
# Marks the handler setup_logging installs. runs/executors.py still imports the name; it
# is kept until that caller moves to logging_verbosity() (issue 27).
_HANDLER_FLAG = "_tunelens_handler"


def get_logger(name: str) -> logging.Logger:
    """The logger for ``name`` (a module's ``__name__``), always under ``tunelens``."""
    if name != ROOT and not name.startswith(f"{ROOT}."):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


def setup_logging(verbose: bool = False) -> None:
    """Send tunelens' log records to stderr through rich: WARNING and up, INFO with ``verbose``.

    Safe to call more than once (the handler is replaced, not added again).
    Without ``verbose``, transformers' own log messages below ERROR and every
    Python warning are filtered out.
    """
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
    _filter_library_warnings(verbose)


def logging_verbosity() -> bool | None:
    """Whether :func:`setup_logging` ran in this process with ``verbose`` (None: it did not
    run), so a worker process can set up its logging the same way."""
    logger = logging.getLogger(ROOT)
    if not any(getattr(handler, _HANDLER_FLAG, False) for handler in logger.handlers):
        return None
    return logger.level <= logging.INFO


def _filter_library_warnings(verbose: bool) -> None:
    """Libraries' warnings and transformers' logger: silent unless ``verbose`` (then shown).

    Filtered by action, not by module: numpy reports a floating-point warning
    at the line of tunelens code that divided, and transformers warns with a
    ``stacklevel`` that points at its caller, so a module filter lets both through.
    """
    if verbose:
        warnings.simplefilter("default")  # in front of (so undoing) a quiet call
        if "transformers" in sys.modules:
            logging.getLogger("transformers").setLevel(logging.WARNING)
        return
    # Read by transformers when it sets up its logger (if it is not imported yet).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
