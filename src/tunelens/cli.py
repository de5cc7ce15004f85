"""The tunelens command line: parse options, call the library, print. No logic here.

Exit status: 0 success, 2 bad input (one line on stderr), 1 internal failure.
"""

from __future__ import annotations

import sys

import typer

from tunelens.errors import TunelensInputError

app = typer.Typer(
    help="Measure what in-context learning and instruction tuning really do to a language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tasks_app = typer.Typer(help="Load, validate and inspect task files.", no_args_is_help=True)
world_app = typer.Typer(help="The embedded instruction world and its model.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(world_app, name="world")


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Log progress details (INFO) and show library warnings (transformers).",
    ),
) -> None:
    """tunelens: ICL vs instruction tuning, measured."""
    from tunelens.log import setup_logging

    setup_logging(verbose)


def main() -> None:
    """Entry point: run the app, turning bad input into exit 2 without a traceback."""
    try:
        app(standalone_mode=False)
    except TunelensInputError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: finished cells are kept; re-run the same command to resume", err=True
        )
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as error:  # noqa: BLE001 - the CLI's last line of defence
        _exit_for_click_error(error)
        raise


def _exit_for_click_error(error: Exception) -> None:
    """Show a usage error the way click would, and exit 2 (typer >= 0.29 bundles click)."""
    try:
        from typer._click import exceptions as click_errors
    except ImportError:  # typer < 0.29 uses the click package
        from click import exceptions as click_errors  # type: ignore[no-redef]
    from typer import exceptions as typer_errors

    if isinstance(error, click_errors.ClickException):
        error.show()
        sys.exit(2 if isinstance(error, click_errors.UsageError) else error.exit_code)
    if isinstance(error, getattr(typer_errors, "Abort", ())):
        typer.echo("aborted", err=True)
        sys.exit(1)
    if isinstance(error, getattr(typer_errors, "Exit", ())):
        sys.exit(getattr(error, "exit_code", 1))


# Command modules register themselves on the apps above.
from tunelens import commands as _commands  # noqa: E402,F401
