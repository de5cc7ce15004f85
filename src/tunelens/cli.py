"""The tunelens command line: parse options, call the library, print. No logic here.

Exit status: 0 success, 2 bad input (one line on stderr), 1 internal failure,
128 + signal when SIGINT, SIGTERM or SIGHUP ended it (130, 143, 129; one
``interrupted:`` line on stderr).
"""

from __future__ import annotations

import contextlib
import os
import sys

import typer

from tunelens.commands import app
from tunelens.errors import TunelensInputError

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: run the app; bad input is exit 2 and one line, a signal exit 128 + signal.

    With ``standalone_mode=False`` typer *returns* the exit code of a
    ``typer.Exit`` (and 130 for a ``KeyboardInterrupt`` it caught), so the
    return value is passed on to ``sys.exit``. SIGINT raises
    :class:`tunelens.interrupt.Interrupted` (so do SIGTERM and SIGHUP), which
    typer does not swallow.
    """
    from tunelens import interrupt

    # OpenMP threads that wait by spinning burn the other cores between the small
    # kernels of small models; passive waiting costs nothing measurable on large
    # ones. Set before torch loads (it reads it once); the user's value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    interrupt.install()
    interrupt.set_status(None)
    try:
        code = app(standalone_mode=False)
    except TunelensInputError as error:
        _fail(str(error))
    except (interrupt.Interrupted, KeyboardInterrupt) as error:
        _interrupted(interrupt.exit_code(error))
    except SystemExit:
        raise
    except OSError as error:
        # Every read or write the library does not wrap itself: a read-only
        # folder, a full disk, a permission: one line naming the path.
        _fail(_os_error_line(error))
    except RecursionError:
        _fail("input nested too deeply to process")
    except Exception as error:  # noqa: BLE001 - the CLI's last line of defence
        _exit_for_click_error(error)
        _exit_for_validation_error(error)
        raise
    if code == 130:
        _interrupted(130)
    if isinstance(code, int) and code:
        sys.exit(code)


def _fail(line: str) -> None:
    from tunelens.terminal import one_line

    _flush_progress()
    typer.echo(f"error: {one_line(line)}", err=True)
    sys.exit(2)


def _interrupted(code: int) -> None:
    from tunelens import interrupt

    _flush_progress()
    typer.echo(interrupt.message(), err=True)
    sys.exit(code)


def _flush_progress() -> None:
    """End a progress line left open, so the error starts on a line of its own."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()


def _os_error_line(error: OSError) -> str:
    path = error.filename if error.filename is not None else None
    reason = error.strerror or str(error) or type(error).__name__
    return f"{path}: {reason}" if path is not None else reason


def _exit_for_validation_error(error: Exception) -> None:
    """A pydantic error from an option model (``--queries 0``): exit 2 naming the field."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        _fail(f"{where}: {first['msg']}" if where else first["msg"])


def _exit_for_click_error(error: Exception) -> None:
    """Show a usage error the way click would, and exit 2 (typer >= 0.29 bundles click)."""
    try:
        from typer._click import exceptions as click_errors
    except ImportError:  # typer < 0.29 uses the click package
        from click import exceptions as click_errors  # type: ignore[no-redef]
    from typer import exceptions as typer_errors

    if isinstance(error, click_errors.UsageError):
        # One line, like every other bad input (click's own shows usage and a hint too).
        hint = " (see --help)" if error.ctx is not None else ""
        _fail(f"{error.format_message()}{hint}")
    if isinstance(error, click_errors.ClickException):
        error.show()
        sys.exit(error.exit_code)
    if isinstance(error, getattr(typer_errors, "Abort", ())):
        typer.echo("aborted", err=True)
        sys.exit(1)
    if isinstance(error, getattr(typer_errors, "Exit", ())):
        sys.exit(getattr(error, "exit_code", 1))
